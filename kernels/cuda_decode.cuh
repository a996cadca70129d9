// defines: CudaDecode, cuda_decode_create, cuda_decode_free, cuda_decode_step
// Batch-1 generation on the GPU: one token at a time through the model's kernels, with a KV cache on the device.
// Part of deepseek.cu (#included, CUDA builds, after cuda_model.cuh).
#pragma once

// ----------------------------------------------------------------------------
// batch-1 decoding with a KV cache: one token at a time through the same kernels (N = 1), K and V written
// straight into the cache, attention by decode_attention_kernel.

struct CudaDecode {
    CudaModel* m;
    int Tmax;
    bf16 *kcache, *vcache;              // [L, Tmax, KV, D]
    bf16 *x, *mid, *out, *ln, *q, *atty, *gate, *up, *act, *logits;   // one token's activations
    float* logits32;                    // [V]
    int* token;
    float *rope_cos, *rope_sin;         // [Tmax, D/2]
    std::vector<float> host_logits;
};

CudaDecode* cuda_decode_create(CudaModel* m, int Tmax) {
    const Config& c = m->cfg;
    if (Tmax < 1 || Tmax > c.max_position_embeddings) die("cuda decode: context %d outside [1, %d]", Tmax, c.max_position_embeddings);
    CudaDecode* d = new CudaDecode;
    d->m = m;
    d->Tmax = Tmax;
    size_t L = c.num_hidden_layers, KVD = (size_t)c.num_key_value_heads * c.head_dim, C = c.hidden_size, F = c.intermediate_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, V = c.vocab_size;
    cudaCheck(cudaMalloc(&d->kcache, 2 * L * Tmax * KVD * sizeof(bf16)));
    d->vcache = d->kcache + L * Tmax * KVD;
    size_t n = 4 * C + 2 * QD + 3 * F + V;
    bf16* base;
    cudaCheck(cudaMalloc(&base, (n + 64 * 10) * sizeof(bf16)));   // + room to align each of the 10 slices
    auto take = [&](size_t count) { bf16* r = base; base += (count + 63) / 64 * 64; return r; };
    d->x = take(C); d->mid = take(C); d->out = take(C); d->ln = take(C); d->q = take(QD); d->atty = take(QD);
    d->gate = take(F); d->up = take(F); d->act = take(F); d->logits = take(V);
    cudaCheck(cudaMalloc(&d->logits32, V * 4));
    cudaCheck(cudaMalloc(&d->token, 4));
    std::vector<float> cs((size_t)Tmax * (c.head_dim / 2)), sn(cs.size());
    rope_table(cs.data(), sn.data(), Tmax, c.head_dim, (float)c.rope_theta);
    cudaCheck(cudaMalloc(&d->rope_cos, cs.size() * 8));
    d->rope_sin = d->rope_cos + cs.size();
    cudaCheck(cudaMemcpy(d->rope_cos, cs.data(), cs.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d->rope_sin, sn.data(), sn.size() * 4, cudaMemcpyHostToDevice));
    d->host_logits.resize(V);
    return d;
}
void cuda_decode_free(CudaDecode* d) {
    if (!d) return;
    for (void* ptr : {(void*)d->kcache, (void*)d->x, (void*)d->logits32, (void*)d->token, (void*)d->rope_cos})
        cudaCheck(cudaFree(ptr));
    delete d;
}
// Feeds `token` at position `pos` (positions 0..pos-1 must already be in the cache); returns the next-token
// logits [V] (fp32, host memory owned by the decoder), or null when want_logits is false (prefill).
const float* cuda_decode_step(CudaDecode* d, int token, int pos, bool want_logits) {
    CudaModel* m = d->m;
    const Config& c = m->cfg;
    if (pos < 0 || pos >= d->Tmax) die("cuda decode: position %d outside the cache [0, %d)", pos, d->Tmax);
    if (token < 0 || token >= c.vocab_size) die("cuda decode: token id %d out of range [0, %d)", token, c.vocab_size);
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    float eps = (float)c.rms_norm_eps;
    const CudaParams& p = m->p;
    cudaCheck(cudaMemcpy(d->token, &token, 4, cudaMemcpyHostToDevice));
    embedding_forward_kernel<<<1, 256>>>(d->x, d->token, p.embed_tokens, 1, C);
    cudaCheck(cudaGetLastError());
    for (int l = 0; l < L; l++) {
        const LayerWeights<bf16> w = layer_weights(p, c, l);
        bf16* kc = d->kcache + (size_t)l * d->Tmax * KVD;
        bf16* vc = d->vcache + (size_t)l * d->Tmax * KVD;
        rmsnorm_forward_cuda(d->ln, nullptr, d->x, w.input_layernorm, 1, C, eps);
        matmul_forward_cuda(d->q, d->ln, w.q_proj, 1, C, QD);
        matmul_forward_cuda(kc + (size_t)pos * KVD, d->ln, w.k_proj, 1, C, KVD);
        matmul_forward_cuda(vc + (size_t)pos * KVD, d->ln, w.v_proj, 1, C, KVD);
        rope_apply_cuda(d->q, d->rope_cos, d->rope_sin, 1, H, D, 1, pos, 1.0f);
        rope_apply_cuda(kc + (size_t)pos * KVD, d->rope_cos, d->rope_sin, 1, KV, D, 1, pos, 1.0f);
        decode_attention_cuda(d->atty, d->q, kc, vc, pos, H, KV, D);
        matmul_forward_cuda(d->mid, d->atty, w.o_proj, 1, QD, C, d->x);
        rmsnorm_forward_cuda(d->ln, nullptr, d->mid, w.post_attention_layernorm, 1, C, eps);
        matmul_forward_cuda(d->gate, d->ln, w.gate_proj, 1, C, F);
        matmul_forward_cuda(d->up, d->ln, w.up_proj, 1, C, F);
        swiglu_forward_cuda(d->act, d->gate, d->up, F);
        matmul_forward_cuda(d->x, d->act, w.down_proj, 1, F, C, d->mid);   // x ← mid + mlp
    }
    if (!want_logits) return nullptr;
    rmsnorm_forward_cuda(d->ln, nullptr, d->x, p.norm, 1, C, eps);
    matmul_forward_cuda(d->logits, d->ln, p.lm_head, 1, C, V);
    bf16_to_f32_kernel<<<ceil_div(V, 256), 256>>>(d->logits32, d->logits, V);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaMemcpy(d->host_logits.data(), d->logits32, (size_t)V * 4, cudaMemcpyDeviceToHost));
    return d->host_logits.data();
}
