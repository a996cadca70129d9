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
    // prefill: one chunk of up to Nmax tokens through the training kernels
    int Nmax = 0;
    bf16 *px, *pmid, *pln, *pq, *patty, *pgate, *pup, *pact;   // [Nmax, C | QD | F]
    float* plse;                        // [H, Nmax] the flash attention's log-sum-exp (unused afterwards)
    int* ptokens;                       // [Nmax]
    size_t bytes = 0, kv_bytes = 0;     // device memory held: all of it, and the KV cache's part
};
#define DECODE_PREFILL_CHUNK 1024       // tokens per prefill chunk (fewer when the context is shorter)

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
    d->Nmax = std::min(Tmax, DECODE_PREFILL_CHUNK);
    size_t N = d->Nmax, H = c.num_attention_heads, pn = N * (3 * C + 2 * QD + 3 * F);
    bf16* pb;
    cudaCheck(cudaMalloc(&pb, (pn + 64 * 8) * sizeof(bf16)));
    d->px = pb;
    auto ptake = [&](size_t count) { bf16* r = pb; pb += (count + 63) / 64 * 64; return r; };
    ptake(N * C); d->pmid = ptake(N * C); d->pln = ptake(N * C); d->pq = ptake(N * QD); d->patty = ptake(N * QD);
    d->pgate = ptake(N * F); d->pup = ptake(N * F); d->pact = ptake(N * F);
    cudaCheck(cudaMalloc(&d->plse, H * N * 4));
    cudaCheck(cudaMalloc(&d->ptokens, N * 4));
    d->kv_bytes = 2 * L * Tmax * KVD * sizeof(bf16);
    d->bytes = d->kv_bytes + (n + 64 * 10) * sizeof(bf16) + V * 4 + 4 + (pn + 64 * 8) * sizeof(bf16) + H * N * 4 + N * 4 +
               (size_t)Tmax * (c.head_dim / 2) * 8;
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
    for (void* ptr : {(void*)d->kcache, (void*)d->x, (void*)d->logits32, (void*)d->token, (void*)d->rope_cos, (void*)d->px,
                      (void*)d->plse, (void*)d->ptokens})
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

// One chunk of N ≤ Nmax tokens at positions pos0 … pos0+N−1: the decode step's kernels over N rows. Attention: the
// training flash kernel when the chunk starts the cache (pos0 = 0: causal attention within the chunk is all there
// is, and the cache rows [0, N) are its K and V), else decode attention row by row over the cache (each query sees
// the earlier chunks and its own chunk up to itself).
static const float* decode_prefill_chunk(CudaDecode* d, const int* tokens, int N, int pos0, bool want_logits) {
    CudaModel* m = d->m;
    const Config& c = m->cfg;
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    float eps = (float)c.rms_norm_eps;
    const CudaParams& p = m->p;
    cudaCheck(cudaMemcpy(d->ptokens, tokens, (size_t)N * 4, cudaMemcpyHostToDevice));
    embedding_forward_kernel<<<N, 256>>>(d->px, d->ptokens, p.embed_tokens, N, C);
    cudaCheck(cudaGetLastError());
    for (int l = 0; l < L; l++) {
        const LayerWeights<bf16> w = layer_weights(p, c, l);
        bf16* kc = d->kcache + (size_t)l * d->Tmax * KVD;
        bf16* vc = d->vcache + (size_t)l * d->Tmax * KVD;
        bf16 *kn = kc + (size_t)pos0 * KVD, *vn = vc + (size_t)pos0 * KVD;   // this chunk's cache rows
        rmsnorm_forward_cuda(d->pln, nullptr, d->px, w.input_layernorm, N, C, eps);
        matmul_forward_cuda(d->pq, d->pln, w.q_proj, N, C, QD);
        matmul_forward_cuda(kn, d->pln, w.k_proj, N, C, KVD);
        matmul_forward_cuda(vn, d->pln, w.v_proj, N, C, KVD);
        rope_apply_cuda(d->pq, d->rope_cos, d->rope_sin, N, H, D, N, pos0, 1.0f);   // row n at position pos0 + n
        rope_apply_cuda(kn, d->rope_cos, d->rope_sin, N, KV, D, N, pos0, 1.0f);
        if (pos0 == 0) attention_forward_cuda(d->patty, d->plse, d->pq, kc, vc, 1, N, H, KV, D);
        else
            for (int n = 0; n < N; n++)
                decode_attention_cuda(d->patty + (size_t)n * QD, d->pq + (size_t)n * QD, kc, vc, pos0 + n, H, KV, D);
        matmul_forward_cuda(d->pmid, d->patty, w.o_proj, N, QD, C, d->px);
        rmsnorm_forward_cuda(d->pln, nullptr, d->pmid, w.post_attention_layernorm, N, C, eps);
        matmul_forward_cuda(d->pgate, d->pln, w.gate_proj, N, C, F);
        matmul_forward_cuda(d->pup, d->pln, w.up_proj, N, C, F);
        swiglu_forward_cuda(d->pact, d->pgate, d->pup, (size_t)N * F);
        matmul_forward_cuda(d->px, d->pact, w.down_proj, N, F, C, d->pmid);   // x ← mid + mlp
    }
    if (!want_logits) return nullptr;
    rmsnorm_forward_cuda(d->ln, nullptr, d->px + (size_t)(N - 1) * C, p.norm, 1, C, eps);   // the last token only
    matmul_forward_cuda(d->logits, d->ln, p.lm_head, 1, C, V);
    bf16_to_f32_kernel<<<ceil_div(V, 256), 256>>>(d->logits32, d->logits, V);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaMemcpy(d->host_logits.data(), d->logits32, (size_t)V * 4, cudaMemcpyDeviceToHost));
    return d->host_logits.data();
}
const float* cuda_decode_prefill(CudaDecode* d, const int* tokens, int n, int pos0, bool want_logits) {
    const Config& c = d->m->cfg;
    if (n < 1) die("cuda prefill: no tokens");
    if (pos0 < 0 || (long long)pos0 + n > d->Tmax)
        die("cuda prefill: positions %d … %lld outside the cache [0, %d)", pos0, (long long)pos0 + n - 1, d->Tmax);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c.vocab_size) die("cuda prefill: token id %d out of range [0, %d)", tokens[i], c.vocab_size);
    if (n == 1) return cuda_decode_step(d, tokens[0], pos0, want_logits);
    const float* z = nullptr;
    for (int i = 0; i < n; i += d->Nmax) {
        int N = std::min(d->Nmax, n - i);
        z = decode_prefill_chunk(d, tokens + i, N, pos0 + i, want_logits && i + N == n);
    }
    return z;
}
int cuda_decode_chunk(const CudaDecode* d) { return d->Nmax; }
size_t cuda_decode_memory_bytes(const CudaDecode* d, size_t* kv_cache_bytes) {
    if (kv_cache_bytes) *kv_cache_bytes = d->kv_bytes;
    return d->bytes;
}
