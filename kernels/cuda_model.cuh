// defines: CudaParams, CudaActs, CudaModel, CudaLayerActs, cuda_layer_acts, cuda_model_create, cuda_model_free,
//          cuda_model_forward, cuda_model_backward, cuda_model_zero_grad, cuda_model_grad_norm,
//          cuda_model_grad_sum_squares, cuda_model_grads, cuda_model_master, cuda_model_refresh_params,
//          cuda_model_shard_optimizer, cuda_model_adamw,
//          cuda_model_get/set_params, cuda_model_get_grads, cuda_model_get/set_adam_state, cuda_model_get_logits,
//          cuda_model_get_losses, cuda_model_memory_bytes, cuda_synchronize
// The model on the GPU: its memory (one allocation per kind), and the forward and backward that chain the
// kernels of cuda_*.cuh as model_forward_cpu chains the _cpu layers. Part of deepseek.cu (#included, CUDA builds).
#pragma once

// ----------------------------------------------------------------------------
// the CUDA model: one allocation per kind, sized up front by cuda_model_create.
//   parameters bf16 (2 bytes/param), master weights fp32 (4), gradients fp32 (4), AdamW m and v fp32 (8),
//   activations: one byte buffer carved into the tensors below (bf16 unless noted).
// With recompute, ln1, ln2 and act keep one layer's slot and backward recomputes them from the residual stream
// and gate/up.

struct CudaParams {   // bf16 views of the 12 tensors, same layout as ParameterTensors
    bf16 *embed_tokens, *input_layernorm, *q_proj, *k_proj, *v_proj, *o_proj, *post_attention_layernorm,
        *gate_proj, *up_proj, *down_proj, *norm, *lm_head;
};
struct CudaActs {
    bf16* residual;      // [L+1, N, C]   the residual stream entering each layer, and the final one
    bf16* resid_mid;     // [L, N, C]     after the attention block
    bf16* ln1;           // [L or 1, N, C]
    float* ln1_rstd;     // [L, N]
    bf16* q;             // [L, N, H*D]   after RoPE
    bf16* k;             // [L, N, KV*D]  after RoPE
    bf16* v;             // [L, N, KV*D]
    bf16* atty;          // [L, N, H*D]   attention output
    float* att_lse;      // [L, B, H, T]  attention log-sum-exp, for backward
    bf16* ln2;           // [L or 1, N, C]
    float* ln2_rstd;     // [L, N]
    bf16* gate;          // [L, N, F]     (dgate after backward)
    bf16* up;            // [L, N, F]     (dup after backward)
    bf16* act;           // [L or 1, N, F] (dact during backward)
    bf16* lnf;           // [N, C]
    float* lnf_rstd;     // [N]
    bf16* logits;        // [N, V]        (dlogits after backward: in-place cross-entropy)
    float* logits_lse;   // [N]
    float* losses;       // [N]
    // backward scratch
    float* dres;         // [N, C] fp32 gradient of the residual stream
    bf16* dres16;        // [N, C] its bf16 copy
    bf16* dln;           // [N, C]
    bf16* datty;         // [N, H*D]
    bf16* dq;            // [N, H*D]
    bf16* dk;            // [N, KV*D]
    bf16* dv;            // [N, KV*D]
    float* att_dsum;     // [B, H, T]
    float* partial;      // [ceil(N/RMS_CHUNK), C] and the norm's NORM_BLOCKS partial sums
    int* inputs;         // [N]
    int* targets;        // [N]
    float* dlosses;      // [N]
    int* emb_groups;     // [3N+1] the embedding backward's grouping of positions by token
};

static int g_cuda_models = 0;   // CudaModels alive: the last one freed releases cuBLASLt's state (cuda_blas_release)
struct CudaModel {
    Config cfg;
    int Bmax = 0, Tmax = 0, B = 0, T = 0;
    bool recompute = false, have_forward = false;
    bool inference = false;              // cuda_model_create_inference: parameters only (no training state)
    std::function<void(int)> on_layer_grads;   // cuda_model_on_layer_grads
    size_t num_parameters = 0, sizes[NUM_PARAM_TENSORS];
    bf16* params_mem = nullptr;
    float *master = nullptr, *grads_mem = nullptr, *adam_mem = nullptr;   // adam_mem: m then v, of AdamW's range
    size_t opt_begin = 0, opt_end = 0;   // AdamW's range: all parameters, or a ZeRO-1 shard (cuda_model_shard_optimizer)
    void* acts_mem = nullptr;
    size_t acts_bytes = 0;
    CudaParams p;
    ParameterTensors g;                  // fp32 gradients on the device
    CudaActs a;
    float *rope_cos = nullptr, *rope_sin = nullptr;
    std::vector<int> inputs, targets;    // host copies of the last forward's tokens
    std::vector<std::pair<size_t, size_t>> decay, no_decay;   // AdamW ranges (offset, count) from param_views
};

// Layer l's slices of the activations for the current B×T (m->B, m->T); with recompute, ln1, ln2 and act are the one
// slot all layers share. The parameters' and gradients' view is layer_weights (deepseek.h).
struct CudaLayerActs {
    bf16 *x, *mid, *out, *ln1, *ln2, *act, *q, *k, *v, *atty, *gate, *up;
    float *ln1_rstd, *ln2_rstd, *att_lse;
};
static CudaLayerActs cuda_layer_acts(const CudaModel* m, int l) {
    const Config& c = m->cfg;
    const CudaActs& a = m->a;
    size_t i = (size_t)l, r = m->recompute ? 0 : i, N = (size_t)m->B * m->T, NC = N * c.hidden_size, NF = N * c.intermediate_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, KVD = (size_t)c.num_key_value_heads * c.head_dim;
    return {a.residual + i * NC, a.resid_mid + i * NC, a.residual + (i + 1) * NC, a.ln1 + r * NC, a.ln2 + r * NC,
            a.act + r * NF, a.q + i * N * QD, a.k + i * N * KVD, a.v + i * N * KVD, a.atty + i * N * QD, a.gate + i * NF,
            a.up + i * NF, a.ln1_rstd + i * N, a.ln2_rstd + i * N, a.att_lse + i * N * c.num_attention_heads};
}

static void cuda_params_point(CudaParams* p, bf16* mem, const size_t s[NUM_PARAM_TENSORS]) {
    bf16** ptrs[NUM_PARAM_TENSORS] = {&p->embed_tokens, &p->input_layernorm, &p->q_proj, &p->k_proj, &p->v_proj,
                                      &p->o_proj, &p->post_attention_layernorm, &p->gate_proj, &p->up_proj,
                                      &p->down_proj, &p->norm, &p->lm_head};
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) { *ptrs[i] = mem; mem += s[i]; }
}
CudaModel* cuda_model_create(const Model& host, int Bmax, int Tmax, bool recompute, bool verbose) {
    cuda_select_device();
    const Config& c = host.cfg;
    if (Bmax < 1 || Tmax < 1) die("cuda: empty batch (B=%d, T=%d)", Bmax, Tmax);
    if (Tmax > c.max_position_embeddings) die("cuda: sequence length %d exceeds the model's context %d", Tmax, c.max_position_embeddings);
    if (c.head_dim > ATT_MAXD) die("cuda: head_dim %d exceeds the attention kernels' maximum %d", c.head_dim, ATT_MAXD);
    CudaModel* m = new CudaModel;
    g_cuda_models++;
    m->cfg = c;
    m->Bmax = Bmax;
    m->Tmax = Tmax;
    m->recompute = recompute;
    param_sizes(c, m->sizes);
    m->num_parameters = config_num_parameters(c);
    size_t P = m->num_parameters;
    // parameters, master weights, gradients, AdamW moments: one allocation each
    cudaCheck(cudaMalloc(&m->params_mem, P * sizeof(bf16)));
    cudaCheck(cudaMalloc(&m->master, P * sizeof(float)));
    cudaCheck(cudaMalloc(&m->grads_mem, P * sizeof(float)));
    cudaCheck(cudaMalloc(&m->adam_mem, 2 * P * sizeof(float)));
    m->opt_end = P;
    cudaCheck(cudaMemcpy(m->master, host.params_memory.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    upload_bf16(m->params_mem, host.params_memory.data(), P);
    cudaCheck(cudaMemset(m->grads_mem, 0, P * sizeof(float)));
    cudaCheck(cudaMemset(m->adam_mem, 0, 2 * P * sizeof(float)));
    cuda_params_point(&m->p, m->params_mem, m->sizes);
    param_point(&m->g, m->grads_mem, m->sizes);
    // AdamW ranges: weight decay on matrices only, merged where neighbours agree
    std::vector<ParamView> views = param_views(c);
    std::sort(views.begin(), views.end(), [](const ParamView& x, const ParamView& y) { return x.offset < y.offset; });
    for (const ParamView& pv : views) {
        size_t n = 1;
        for (int64_t d : pv.shape) n *= (size_t)d;
        auto& list = pv.is_matrix ? m->decay : m->no_decay;
        if (!list.empty() && list.back().first + list.back().second == pv.offset) list.back().second += n;
        else list.push_back({pv.offset, n});
    }
    // activations: one byte buffer, every tensor aligned to 256 bytes
    size_t N = (size_t)Bmax * Tmax, L = c.num_hidden_layers, C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, KVD = (size_t)c.num_key_value_heads * c.head_dim;
    size_t Ls = recompute ? 1 : L, H = c.num_attention_heads;
    size_t chunks = (size_t)ceil_div((long long)N, RMS_CHUNK);
    struct Slot { void** ptr; size_t bytes; };
    CudaActs& a = m->a;
    std::vector<Slot> slots = {
        {(void**)&a.residual, (L + 1) * N * C * 2}, {(void**)&a.resid_mid, L * N * C * 2}, {(void**)&a.ln1, Ls * N * C * 2},
        {(void**)&a.ln1_rstd, L * N * 4},           {(void**)&a.q, L * N * QD * 2},          {(void**)&a.k, L * N * KVD * 2},
        {(void**)&a.v, L * N * KVD * 2},            {(void**)&a.atty, L * N * QD * 2},      {(void**)&a.att_lse, L * N * H * 4},
        {(void**)&a.ln2, Ls * N * C * 2},           {(void**)&a.ln2_rstd, L * N * 4},       {(void**)&a.gate, L * N * F * 2},
        {(void**)&a.up, L * N * F * 2},             {(void**)&a.act, Ls * N * F * 2},       {(void**)&a.lnf, N * C * 2},
        {(void**)&a.lnf_rstd, N * 4},               {(void**)&a.logits, N * V * 2},         {(void**)&a.logits_lse, N * 4},
        {(void**)&a.losses, N * 4},                 {(void**)&a.dres, N * C * 4},           {(void**)&a.dres16, N * C * 2},
        {(void**)&a.dln, N * C * 2},                {(void**)&a.datty, N * QD * 2},         {(void**)&a.dq, N * QD * 2},
        {(void**)&a.dk, N * KVD * 2},               {(void**)&a.dv, N * KVD * 2},           {(void**)&a.att_dsum, N * H * 4},
        {(void**)&a.partial, std::max(chunks * C, (size_t)NORM_BLOCKS) * 4},
        {(void**)&a.inputs, N * 4},                 {(void**)&a.targets, N * 4},            {(void**)&a.dlosses, N * 4},
        {(void**)&a.emb_groups, (3 * N + 1) * 4}};
    size_t total = 0;
    for (auto& s : slots) total += (s.bytes + 255) / 256 * 256;
    m->acts_bytes = total;
    cudaError_t e = cudaMalloc(&m->acts_mem, total);
    if (e != cudaSuccess) {
        cudaGetLastError();
        die("cuda: cannot allocate %.2f GiB of activations for B=%d T=%d (%s); lower the batch or use --recompute",
            total / 1073741824.0, Bmax, Tmax, cudaGetErrorString(e));
    }
    char* ptr = (char*)m->acts_mem;
    for (auto& s : slots) { *s.ptr = ptr; ptr += (s.bytes + 255) / 256 * 256; }
    std::vector<float> cs((size_t)Tmax * (c.head_dim / 2)), sn(cs.size());
    rope_table(cs.data(), sn.data(), Tmax, c.head_dim, (float)c.rope_theta);
    cudaCheck(cudaMalloc(&m->rope_cos, cs.size() * 4));
    cudaCheck(cudaMalloc(&m->rope_sin, sn.size() * 4));
    cudaCheck(cudaMemcpy(m->rope_cos, cs.data(), cs.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m->rope_sin, sn.data(), sn.size() * 4, cudaMemcpyHostToDevice));
    if (verbose) {
        double GiB = 1073741824.0;
        printf("cuda: %s, %zu parameters; memory: params bf16 %.2f GiB, master fp32 %.2f GiB, grads fp32 %.2f GiB, "
               "AdamW m+v %.2f GiB, activations %.2f GiB (B=%d T=%d%s) — total %.2f GiB\n",
               cuda_device_name(cuda_device_index()).c_str(), P, P * 2 / GiB, P * 4 / GiB, P * 4 / GiB, P * 8 / GiB, total / GiB, Bmax, Tmax,
               recompute ? ", recompute" : "", (P * 18 + total) / GiB);
        printf("cuda: attention on %s (head_dim %d)\n", cuda_attention_path(c.head_dim), c.head_dim);
    }
    return m;
}

// ----------------------------------------------------------------------------
// the inference-only model: parameters only, uploaded one tensor slice at a time from the stored weights

// one stored matrix [rows, cols] (fp32, bf16 or q8_0) into bf16 on the device, through a host staging buffer
static void upload_weight_bf16(bf16* dst, const InferWeight& w, size_t rows, size_t cols, std::vector<uint16_t>* stage) {
    size_t n = rows * cols;
    stage->resize(n);
    uint16_t* s = stage->data();
    if (w.bf16) {
        memcpy(s, w.bf16, n * 2);
    } else if (w.f32) {
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) s[i] = f32_to_bf16(w.f32[i]);
    } else if (w.q8) {
        if (cols % Q8_BLOCK) die("cuda: a q8_0 matrix with %zu columns (not whole blocks of %d)", cols, Q8_BLOCK);
        #pragma omp parallel
        {
            std::vector<float> row(cols);
            #pragma omp for schedule(static)
            for (size_t r = 0; r < rows; r++) {
                q8_0_dequantize(w.q8 + r * cols, w.q8_scale + r * (cols / Q8_BLOCK), cols, row.data());
                for (size_t i = 0; i < cols; i++) s[r * cols + i] = f32_to_bf16(row[i]);
            }
        }
    } else {
        die("cuda: a weight matrix is missing");
    }
    cudaCheck(cudaMemcpy(dst, s, n * 2, cudaMemcpyHostToDevice));
}
static void upload_vector_bf16(bf16* dst, const float* src, size_t n, std::vector<uint16_t>* stage) {
    stage->resize(n);
    for (size_t i = 0; i < n; i++) (*stage)[i] = f32_to_bf16(src[i]);
    cudaCheck(cudaMemcpy(dst, stage->data(), n * 2, cudaMemcpyHostToDevice));
}
CudaModel* cuda_model_create_inference(const InferModel& im, bool verbose) {
    cuda_select_device();
    const Config& c = im.cfg;
    if (c.head_dim > ATT_MAXD) die("cuda: head_dim %d exceeds the attention kernels' maximum %d", c.head_dim, ATT_MAXD);
    if ((int)im.layers.size() != c.num_hidden_layers) die("cuda: the model holds %zu layers, its config %d", im.layers.size(), c.num_hidden_layers);
    CudaModel* m = new CudaModel;
    g_cuda_models++;
    m->cfg = c;
    m->inference = true;
    param_sizes(c, m->sizes);
    m->num_parameters = config_num_parameters(c);
    size_t P = m->num_parameters, C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, KVD = (size_t)c.num_key_value_heads * c.head_dim;
    cudaError_t e = cudaMalloc(&m->params_mem, P * sizeof(bf16));
    if (e != cudaSuccess) {
        cudaGetLastError();
        delete m;
        g_cuda_models--;
        die("cuda: cannot allocate %.2f GiB for the bf16 weights (%s)", P * 2 / 1073741824.0, cudaGetErrorString(e));
    }
    cuda_params_point(&m->p, m->params_mem, m->sizes);
    std::vector<uint16_t> stage;
    upload_weight_bf16(m->p.embed_tokens, im.embed_tokens, V, C, &stage);
    upload_weight_bf16(m->p.lm_head, im.lm_head, V, C, &stage);
    upload_vector_bf16(m->p.norm, im.norm, C, &stage);
    for (int l = 0; l < c.num_hidden_layers; l++) {
        const LayerWeights<bf16> w = layer_weights(m->p, c, l);
        const InferLayer& L = im.layers[l];
        upload_vector_bf16(w.input_layernorm, L.input_layernorm, C, &stage);
        upload_vector_bf16(w.post_attention_layernorm, L.post_attention_layernorm, C, &stage);
        upload_weight_bf16(w.q_proj, L.q_proj, QD, C, &stage);
        upload_weight_bf16(w.k_proj, L.k_proj, KVD, C, &stage);
        upload_weight_bf16(w.v_proj, L.v_proj, KVD, C, &stage);
        upload_weight_bf16(w.o_proj, L.o_proj, C, QD, &stage);
        upload_weight_bf16(w.gate_proj, L.gate_proj, F, C, &stage);
        upload_weight_bf16(w.up_proj, L.up_proj, F, C, &stage);
        upload_weight_bf16(w.down_proj, L.down_proj, C, F, &stage);
    }
    if (verbose)
        printf("cuda: %s, inference only: %zu parameters as bf16 weights, %.2f GiB (from %s); no master weights, "
               "gradients, optimizer state or training activations\n", cuda_device_name(cuda_device_index()).c_str(), P,
               P * 2 / 1073741824.0, im.weights_dtype);
    return m;
}
// the training calls on an inference-only model: one clear line instead of a null pointer on the device
static void require_training_state(const CudaModel* m, const char* what) {
    if (m->inference) die("cuda: %s needs the training state, and this model was created for inference only", what);
}

void cuda_model_free(CudaModel* m) {
    if (!m) return;
    for (void* ptr : {(void*)m->params_mem, (void*)m->master, (void*)m->grads_mem, (void*)m->adam_mem, m->acts_mem,
                      (void*)m->rope_cos, (void*)m->rope_sin})
        cudaCheck(cudaFree(ptr));
    delete m;
    if (--g_cuda_models == 0) cuda_blas_release();   // the last model: cuBLASLt's handle, plans and workspace too
}

// Forward over tokens [B,T], like model_forward: returns the mean loss over unmasked targets (0 if none / null).
float cuda_model_forward(CudaModel* m, const int* inputs, const int* targets, int B, int T) {
    require_training_state(m, "forward");
    const Config& c = m->cfg;
    if (B < 1 || T < 1) die("forward: empty batch (B=%d, T=%d)", B, T);
    if ((size_t)B * T > (size_t)m->Bmax * m->Tmax || T > m->Tmax)
        die("cuda forward: B=%d T=%d exceeds the allocated B=%d T=%d", B, T, m->Bmax, m->Tmax);
    int N = B * T;
    for (int i = 0; i < N; i++) {
        if (inputs[i] < 0 || inputs[i] >= c.vocab_size) die("forward: token id %d out of range [0, %d)", inputs[i], c.vocab_size);
        if (targets && targets[i] >= c.vocab_size) die("forward: target id %d out of range [0, %d)", targets[i], c.vocab_size);
    }
    m->B = B;
    m->T = T;
    m->inputs.assign(inputs, inputs + N);
    if (targets) m->targets.assign(targets, targets + N); else m->targets.assign(N, -1);
    CudaActs& a = m->a;
    const CudaParams& p = m->p;
    cudaCheck(cudaMemcpy(a.inputs, m->inputs.data(), N * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(a.targets, m->targets.data(), N * 4, cudaMemcpyHostToDevice));
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    float eps = (float)c.rms_norm_eps;
    size_t NC = (size_t)N * C, NF = (size_t)N * F;

    embedding_forward_kernel<<<N, 256>>>(a.residual, a.inputs, p.embed_tokens, N, C);
    cudaCheck(cudaGetLastError());
    for (int l = 0; l < L; l++) {
        const LayerWeights<bf16> w = layer_weights(p, c, l);
        const CudaLayerActs la = cuda_layer_acts(m, l);
        // attention block: x + o_proj(attention(rope(q_proj(ln1)), rope(k_proj(ln1)), v_proj(ln1)))
        rmsnorm_forward_cuda(la.ln1, la.ln1_rstd, la.x, w.input_layernorm, N, C, eps);
        matmul_forward_cuda(la.q, la.ln1, w.q_proj, N, C, QD);
        matmul_forward_cuda(la.k, la.ln1, w.k_proj, N, C, KVD);
        matmul_forward_cuda(la.v, la.ln1, w.v_proj, N, C, KVD);
        rope_apply_cuda(la.q, m->rope_cos, m->rope_sin, N, H, D, T, 0, 1.0f);
        rope_apply_cuda(la.k, m->rope_cos, m->rope_sin, N, KV, D, T, 0, 1.0f);
        attention_forward_cuda(la.atty, la.att_lse, la.q, la.k, la.v, B, T, H, KV, D);
        matmul_forward_cuda(la.mid, la.atty, w.o_proj, N, QD, C, la.x);   // + x: fused residual add
        // MLP block: mid + down_proj(silu(gate_proj(ln2)) ⊙ up_proj(ln2))
        rmsnorm_forward_cuda(la.ln2, la.ln2_rstd, la.mid, w.post_attention_layernorm, N, C, eps);
        matmul_forward_cuda(la.gate, la.ln2, w.gate_proj, N, C, F);
        matmul_forward_cuda(la.up, la.ln2, w.up_proj, N, C, F);
        swiglu_forward_cuda(la.act, la.gate, la.up, NF);
        matmul_forward_cuda(la.out, la.act, w.down_proj, N, F, C, la.mid);  // + mid
    }
    rmsnorm_forward_cuda(a.lnf, a.lnf_rstd, a.residual + (size_t)L * NC, p.norm, N, C, eps);
    matmul_forward_cuda(a.logits, a.lnf, p.lm_head, N, C, V);
    crossentropy_forward_kernel<<<N, 512>>>(a.losses, a.logits_lse, a.logits, a.targets, V);
    cudaCheck(cudaGetLastError());
    m->have_forward = true;
    if (!targets) return 0.0f;
    std::vector<float> losses(N);
    cudaCheck(cudaMemcpy(losses.data(), a.losses, N * 4, cudaMemcpyDeviceToHost));
    double sum = 0.0;
    size_t count = 0;
    for (int i = 0; i < N; i++)
        if (targets[i] >= 0) { sum += losses[i]; count++; }
    return count ? (float)(sum / count) : 0.0f;
}

// Backward of Σ_t dlosses[t]·nll_t, accumulating (+=) into the fp32 gradients, like model_backward.
// Once per forward: it consumes the logits (in place) and gate/up.
void cuda_model_backward(CudaModel* m, const float* dlosses) {
    require_training_state(m, "backward");
    if (!m->have_forward) die("backward: call forward first (once per forward on the CUDA backend)");
    m->have_forward = false;
    const Config& c = m->cfg;
    int B = m->B, T = m->T, N = B * T;
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    float eps = (float)c.rms_norm_eps;
    size_t NC = (size_t)N * C, NF = (size_t)N * F;
    CudaActs& a = m->a;
    const CudaParams& p = m->p;
    ParameterTensors& g = m->g;
    cudaCheck(cudaMemcpy(a.dlosses, dlosses, N * 4, cudaMemcpyHostToDevice));

    crossentropy_backward_inplace_kernel<<<N, 512>>>(a.logits, a.logits_lse, a.targets, a.dlosses, V);
    cudaCheck(cudaGetLastError());
    bf16* dlogits = a.logits;
    matmul_backward_cuda(a.dln, g.lm_head, dlogits, a.lnf, p.lm_head, N, C, V, Accum::Overwrite);
    cudaCheck(cudaMemset(a.dres, 0, NC * 4));
    rmsnorm_backward_cuda(a.dres, a.dres16, g.norm, a.partial, a.dln, a.residual + (size_t)L * NC, p.norm, a.lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        const LayerWeights<bf16> w = layer_weights(p, c, l);
        const LayerWeights<float> gw = layer_weights(g, c, l);
        const CudaLayerActs la = cuda_layer_acts(m, l);
        // MLP block: dres16 is the gradient of the layer's output; it flows to mid directly and through the MLP
        if (m->recompute) {
            rmsnorm_forward_cuda(la.ln2, nullptr, la.mid, w.post_attention_layernorm, N, C, eps);
            swiglu_forward_cuda(la.act, la.gate, la.up, NF);
        }
        matmul_backward_cuda(nullptr, gw.down_proj, a.dres16, la.act, nullptr, N, F, C, Accum::Overwrite);
        matmul_backward_cuda(la.act, nullptr, a.dres16, nullptr, w.down_proj, N, F, C, Accum::Overwrite);  // act ← dact
        swiglu_backward_cuda(la.gate, la.up, la.act, NF);                                                  // gate ← dgate, up ← dup
        matmul_backward_cuda(a.dln, gw.gate_proj, la.gate, la.ln2, w.gate_proj, N, C, F, Accum::Overwrite);
        matmul_backward_cuda(a.dln, gw.up_proj, la.up, la.ln2, w.up_proj, N, C, F, Accum::Add);
        rmsnorm_backward_cuda(a.dres, a.dres16, gw.post_attention_layernorm, a.partial, a.dln, la.mid, w.post_attention_layernorm,
                              la.ln2_rstd, N, C);
        // attention block
        matmul_backward_cuda(a.datty, gw.o_proj, a.dres16, la.atty, w.o_proj, N, QD, C, Accum::Overwrite);
        attention_backward_cuda(a.dq, a.dk, a.dv, a.att_dsum, a.datty, la.atty, la.att_lse, la.q, la.k, la.v, B, T, H, KV, D);
        rope_apply_cuda(a.dq, m->rope_cos, m->rope_sin, N, H, D, T, 0, -1.0f);
        rope_apply_cuda(a.dk, m->rope_cos, m->rope_sin, N, KV, D, T, 0, -1.0f);
        if (m->recompute) rmsnorm_forward_cuda(la.ln1, nullptr, la.x, w.input_layernorm, N, C, eps);
        matmul_backward_cuda(a.dln, gw.q_proj, a.dq, la.ln1, w.q_proj, N, C, QD, Accum::Overwrite);
        matmul_backward_cuda(a.dln, gw.k_proj, a.dk, la.ln1, w.k_proj, N, C, KVD, Accum::Add);
        matmul_backward_cuda(a.dln, gw.v_proj, a.dv, la.ln1, w.v_proj, N, C, KVD, Accum::Add);
        rmsnorm_backward_cuda(a.dres, a.dres16, gw.input_layernorm, a.partial, a.dln, la.x, w.input_layernorm, la.ln1_rstd, N, C);
        if (m->on_layer_grads) m->on_layer_grads(l);   // layer l's gradients are final once these kernels ran
    }
    // embedding: one block per distinct token, positions in a fixed order
    std::vector<int> uniq, starts, order;
    embedding_group(m->inputs.data(), N, V, &uniq, &starts, &order);
    int* d_uniq = a.emb_groups;   // uniq | starts | order: at most N + (N+1) + N ints
    int* d_starts = d_uniq + uniq.size();
    int* d_order = d_starts + starts.size();
    cudaCheck(cudaMemcpy(d_uniq, uniq.data(), uniq.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d_starts, starts.data(), starts.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d_order, order.data(), order.size() * 4, cudaMemcpyHostToDevice));
    embedding_backward_kernel<<<(int)uniq.size(), 256>>>(g.embed_tokens, a.dres, d_uniq, d_starts, d_order, C);
    cudaCheck(cudaGetLastError());
}

void cuda_model_on_layer_grads(CudaModel* m, std::function<void(int)> fn) { m->on_layer_grads = std::move(fn); }
void cuda_model_zero_grad(CudaModel* m) {
    require_training_state(m, "zero_grad");
    cudaCheck(cudaMemset(m->grads_mem, 0, m->num_parameters * sizeof(float))); }

float cuda_model_grad_norm(CudaModel* m) { return (float)sqrt(cuda_model_grad_sum_squares(m, 0, m->num_parameters)); }
double cuda_model_grad_sum_squares(CudaModel* m, size_t begin, size_t end) {
    require_training_state(m, "the gradient norm");
    if (begin > end || end > m->num_parameters) die("cuda: gradient range [%zu, %zu) outside %zu parameters", begin, end, m->num_parameters);
    return grad_sumsq_cuda(m->grads_mem + begin, end - begin, m->a.partial);
}
float* cuda_model_grads(CudaModel* m) { return m->grads_mem; }
float* cuda_model_master(CudaModel* m) { return m->master; }
void cuda_model_refresh_params(CudaModel* m) {
    require_training_state(m, "refreshing the parameters");
    size_t P = m->num_parameters;
    f32_to_bf16_kernel<<<ceil_div((long long)P, 256), 256>>>(m->params_mem, m->master, P);
    cudaCheck(cudaGetLastError());
}
void cuda_model_shard_optimizer(CudaModel* m, size_t begin, size_t end) {
    require_training_state(m, "ZeRO-1");
    if (begin > end || end > m->num_parameters) die("cuda: AdamW range [%zu, %zu) outside %zu parameters", begin, end, m->num_parameters);
    cudaCheck(cudaFree(m->adam_mem));
    m->adam_mem = nullptr;
    size_t n = end - begin;
    cudaCheck(cudaMalloc(&m->adam_mem, std::max<size_t>(2 * n, 1) * sizeof(float)));
    cudaCheck(cudaMemset(m->adam_mem, 0, std::max<size_t>(2 * n, 1) * sizeof(float)));
    m->opt_begin = begin;
    m->opt_end = end;
    printf("cuda: ZeRO-1: AdamW m+v for parameters [%zu, %zu): %.2f GiB on this GPU\n", begin, end, 2.0 * n * 4 / 1073741824.0);
}

// AdamW over the optimizer's range [opt_begin, opt_end): each weight-decay range's overlap with it; m and v are
// indexed from opt_begin
void cuda_model_adamw(CudaModel* m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale, int step) {
    require_training_state(m, "AdamW");
    if (step < 1) die("adamw: step must be ≥ 1, got %d", step);
    size_t b = m->opt_begin, e = m->opt_end, n = e - b;
    float *mm = m->adam_mem, *vv = m->adam_mem + n;   // the moments of parameter i ∈ [b, e) at mm[i − b], vv[i − b]
    for (int k = 0; k < 2; k++)
        for (auto& r : k == 0 ? m->decay : m->no_decay) {
            size_t lo = std::max(b, r.first), hi = std::min(e, r.first + r.second);
            if (lo >= hi) continue;
            adamw_cuda(m->master + lo, m->params_mem + lo, mm + (lo - b), vv + (lo - b), m->grads_mem + lo, hi - lo, lr, beta1, beta2, eps,
                       k == 0 ? weight_decay : 0.0f, grad_scale, step);
        }
}

void cuda_model_get_params(CudaModel* m, Model* host) {
    require_training_state(m, "reading the master weights");
    if (host->num_parameters != m->num_parameters) model_build(host, m->cfg);
    cudaCheck(cudaMemcpy(host->params_memory.data(), m->master, m->num_parameters * 4, cudaMemcpyDeviceToHost));
}
void cuda_model_set_params(CudaModel* m, const Model& host) {
    require_training_state(m, "setting the master weights");
    if (host.num_parameters != m->num_parameters) die("cuda: set_params with a model of a different size");
    cudaCheck(cudaMemcpy(m->master, host.params_memory.data(), m->num_parameters * 4, cudaMemcpyHostToDevice));
    upload_bf16(m->params_mem, host.params_memory.data(), m->num_parameters);
}
void cuda_model_get_grads(CudaModel* m, float* host_grads) {
    require_training_state(m, "reading the gradients");
    cudaCheck(cudaMemcpy(host_grads, m->grads_mem, m->num_parameters * 4, cudaMemcpyDeviceToHost));
}
// AdamW's moments of the optimizer's range: opt_end − opt_begin elements each
void cuda_model_get_adam_state(CudaModel* m, float* host_m, float* host_v) {
    require_training_state(m, "reading AdamW state");
    size_t n = m->opt_end - m->opt_begin;
    cudaCheck(cudaMemcpy(host_m, m->adam_mem, n * 4, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(host_v, m->adam_mem + n, n * 4, cudaMemcpyDeviceToHost));
}
void cuda_model_set_adam_state(CudaModel* m, const float* host_m, const float* host_v) {
    require_training_state(m, "setting AdamW state");
    size_t n = m->opt_end - m->opt_begin;
    cudaCheck(cudaMemcpy(m->adam_mem, host_m, n * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m->adam_mem + n, host_v, n * 4, cudaMemcpyHostToDevice));
}
// the last forward's logits [B,T,V] as fp32 (before backward, which overwrites them)
void cuda_model_get_logits(CudaModel* m, float* host_logits) {
    if (!m->have_forward) die("cuda: logits are only available between forward and backward");
    download_bf16(host_logits, m->a.logits, (size_t)m->B * m->T * m->cfg.vocab_size);
}
void cuda_model_get_losses(CudaModel* m, float* host_losses) {
    cudaCheck(cudaMemcpy(host_losses, m->a.losses, (size_t)m->B * m->T * 4, cudaMemcpyDeviceToHost));
}
size_t cuda_model_memory_bytes(const CudaModel* m) {
    if (m->inference) return m->num_parameters * 2;
    return m->num_parameters * 10 + (m->opt_end - m->opt_begin) * 8 + m->acts_bytes;
}
void cuda_synchronize() { cudaCheck(cudaDeviceSynchronize()); }
size_t cuda_memory_in_use() {
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    return total_b - free_b;
}
