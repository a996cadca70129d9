// defines: DevBuf, cuda_op_embedding, cuda_op_matmul, cuda_op_rmsnorm, cuda_op_rope, cuda_op_attention,
//          cuda_op_decode_attention, cuda_op_swiglu, cuda_op_crossentropy, cuda_op_adamw, cuda_op_grad_norm
// Single CUDA kernels on host arrays, for tests/test_cuda.cpp, which compares each with its _ref twin. Part of
// deepseek.cu (#included, CUDA builds, last).
#pragma once

// ----------------------------------------------------------------------------
// single kernels on host arrays, for tests/test_cuda.cpp: inputs are rounded to bf16 where the kernel reads
// bf16, outputs come back as fp32. Each names its _ref twin (deepseek.cu).

struct DevBuf {   // a device buffer freed at scope exit
    void* p = nullptr;
    explicit DevBuf(size_t bytes) { cudaCheck(cudaMalloc(&p, bytes ? bytes : 1)); }
    // (a destructor must not throw, and die() throws in the tests: a failed free is reported, not fatal)
    ~DevBuf() {
        cudaError_t e = cudaFree(p);
        if (e != cudaSuccess) fprintf(stderr, "warning: cudaFree failed: %s\n", cudaGetErrorString(e));
    }
    DevBuf(const DevBuf&) = delete;
    DevBuf& operator=(const DevBuf&) = delete;
    bf16* b() const { return (bf16*)p; }
    float* f() const { return (float*)p; }
    int* i() const { return (int*)p; }
};
static void up_f32(float* d, const float* h, size_t n) { cudaCheck(cudaMemcpy(d, h, n * 4, cudaMemcpyHostToDevice)); }
static void down_f32(float* h, const float* d, size_t n) { cudaCheck(cudaMemcpy(h, d, n * 4, cudaMemcpyDeviceToHost)); }

void cuda_op_embedding(float* out, float* dwte, const int* tokens, const float* wte, const float* dres, int N, int V, int C) {
    cuda_select_device();
    DevBuf t(N * 4), w((size_t)V * C * 2), o((size_t)N * C * 2), dw((size_t)V * C * 4), dr((size_t)N * C * 4);
    cudaCheck(cudaMemcpy(t.p, tokens, N * 4, cudaMemcpyHostToDevice));
    upload_bf16(w.b(), wte, (size_t)V * C);
    embedding_forward_kernel<<<N, 256>>>(o.b(), t.i(), w.b(), N, C);
    cudaCheck(cudaGetLastError());
    download_bf16(out, o.b(), (size_t)N * C);
    up_f32(dw.f(), dwte, (size_t)V * C);
    up_f32(dr.f(), dres, (size_t)N * C);
    std::vector<int> uniq, starts, order;
    embedding_group(tokens, N, V, &uniq, &starts, &order);
    DevBuf du(uniq.size() * 4), ds(starts.size() * 4), dor(order.size() * 4);
    cudaCheck(cudaMemcpy(du.p, uniq.data(), uniq.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(ds.p, starts.data(), starts.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(dor.p, order.data(), order.size() * 4, cudaMemcpyHostToDevice));
    embedding_backward_kernel<<<(int)uniq.size(), 256>>>(dw.f(), dr.f(), du.i(), ds.i(), dor.i(), C);
    cudaCheck(cudaGetLastError());
    down_f32(dwte, dw.f(), (size_t)V * C);
}
// twin: matmul_forward_ref / matmul_backward_ref. dinp is overwritten (bf16), dweight accumulates (fp32).
void cuda_op_matmul(float* out, float* dinp, float* dweight, const float* inp, const float* weight, const float* dout,
                    int N, int in, int out_dim) {
    cuda_select_device();
    DevBuf x((size_t)N * in * 2), w((size_t)out_dim * in * 2), o((size_t)N * out_dim * 2), go((size_t)N * out_dim * 2),
        dx((size_t)N * in * 2), dw((size_t)out_dim * in * 4);
    upload_bf16(x.b(), inp, (size_t)N * in);
    upload_bf16(w.b(), weight, (size_t)out_dim * in);
    upload_bf16(go.b(), dout, (size_t)N * out_dim);
    up_f32(dw.f(), dweight, (size_t)out_dim * in);
    matmul_forward_cuda(o.b(), x.b(), w.b(), N, in, out_dim);
    matmul_backward_cuda(dx.b(), dw.f(), go.b(), x.b(), w.b(), N, in, out_dim, Accum::Overwrite);
    download_bf16(out, o.b(), (size_t)N * out_dim);
    download_bf16(dinp, dx.b(), (size_t)N * in);
    down_f32(dweight, dw.f(), (size_t)out_dim * in);
    if (g_cuda_models == 0) cuda_blas_release();
}
// twin: rmsnorm_forward_ref / rmsnorm_backward_ref. dinp (fp32) and dweight accumulate.
void cuda_op_rmsnorm(float* out, float* rstd, float* dinp, float* dweight, const float* inp, const float* weight,
                     const float* dout, int N, int C, float eps) {
    cuda_select_device();
    DevBuf x((size_t)N * C * 2), w((size_t)C * 2), o((size_t)N * C * 2), r((size_t)N * 4), go((size_t)N * C * 2),
        dx((size_t)N * C * 4), dw((size_t)C * 4), part((size_t)ceil_div(N, RMS_CHUNK) * C * 4);
    upload_bf16(x.b(), inp, (size_t)N * C);
    upload_bf16(w.b(), weight, C);
    upload_bf16(go.b(), dout, (size_t)N * C);
    up_f32(dx.f(), dinp, (size_t)N * C);
    up_f32(dw.f(), dweight, C);
    rmsnorm_forward_cuda(o.b(), r.f(), x.b(), w.b(), N, C, eps);
    rmsnorm_backward_cuda(dx.f(), nullptr, dw.f(), part.f(), go.b(), x.b(), w.b(), r.f(), N, C);
    download_bf16(out, o.b(), (size_t)N * C);
    down_f32(rstd, r.f(), N);
    down_f32(dinp, dx.f(), (size_t)N * C);
    down_f32(dweight, dw.f(), C);
}
// twin: rope_forward_ref (sign 1) / rope_backward_ref (sign −1); x [N, heads, D] in place, position n % T
void cuda_op_rope(float* x, int N, int T, int heads, int D, float theta, float sign) {
    cuda_select_device();
    std::vector<float> cs((size_t)T * (D / 2)), sn(cs.size());
    rope_table(cs.data(), sn.data(), T, D, theta);
    DevBuf xb((size_t)N * heads * D * 2), c(cs.size() * 4), s(sn.size() * 4);
    upload_bf16(xb.b(), x, (size_t)N * heads * D);
    up_f32(c.f(), cs.data(), cs.size());
    up_f32(s.f(), sn.data(), sn.size());
    rope_apply_cuda(xb.b(), c.f(), s.f(), N, heads, D, T, 0, sign);
    download_bf16(x, xb.b(), (size_t)N * heads * D);
}
// twin: attention_forward_ref / attention_backward_ref (the CPU keeps att [B,H,T,T]; the kernels never form it)
void cuda_op_attention(float* y, float* dq, float* dk, float* dv, const float* q, const float* k, const float* v,
                       const float* dy, int B, int T, int H, int KV, int D) {
    cuda_select_device();
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KV * D;
    DevBuf qb(nq * 2), kb(nk * 2), vb(nk * 2), yb(nq * 2), lse((size_t)B * H * T * 4), dyb(nq * 2), dqb(nq * 2), dkb(nk * 2),
        dvb(nk * 2), dsum((size_t)B * H * T * 4);
    upload_bf16(qb.b(), q, nq);
    upload_bf16(kb.b(), k, nk);
    upload_bf16(vb.b(), v, nk);
    upload_bf16(dyb.b(), dy, nq);
    attention_forward_cuda(yb.b(), lse.f(), qb.b(), kb.b(), vb.b(), B, T, H, KV, D);
    attention_backward_cuda(dqb.b(), dkb.b(), dvb.b(), dsum.f(), dyb.b(), yb.b(), lse.f(), qb.b(), kb.b(), vb.b(), B, T, H, KV, D);
    download_bf16(y, yb.b(), nq);
    download_bf16(dq, dqb.b(), nq);
    download_bf16(dk, dkb.b(), nk);
    download_bf16(dv, dvb.b(), nk);
}
// twin: attention_forward_ref's row t = pos for one sequence; q [H,D] at position pos, kc/vc [pos+1, KV, D]
void cuda_op_decode_attention(float* y, const float* q, const float* kc, const float* vc, int pos, int H, int KV, int D) {
    cuda_select_device();
    size_t nk = (size_t)(pos + 1) * KV * D;
    DevBuf qb((size_t)H * D * 2), kb(nk * 2), vb(nk * 2), yb((size_t)H * D * 2);
    upload_bf16(qb.b(), q, (size_t)H * D);
    upload_bf16(kb.b(), kc, nk);
    upload_bf16(vb.b(), vc, nk);
    decode_attention_cuda(yb.b(), qb.b(), kb.b(), vb.b(), pos, H, KV, D);
    download_bf16(y, yb.b(), (size_t)H * D);
}
// twin: swiglu_forward_ref / swiglu_backward_ref (dgate, dup overwritten)
void cuda_op_swiglu(float* act, float* dgate, float* dup, const float* gate, const float* up, const float* dact, size_t n) {
    cuda_select_device();
    DevBuf g(n * 2), u(n * 2), a(n * 2), da(n * 2);
    upload_bf16(g.b(), gate, n);
    upload_bf16(u.b(), up, n);
    upload_bf16(da.b(), dact, n);
    swiglu_forward_cuda(a.b(), g.b(), u.b(), n);
    swiglu_backward_cuda(g.b(), u.b(), da.b(), n);
    download_bf16(act, a.b(), n);
    download_bf16(dgate, g.b(), n);
    download_bf16(dup, u.b(), n);
}
// twin: crossentropy_forward_ref / crossentropy_backward_ref; dlogits is the logits buffer after the in-place backward
void cuda_op_crossentropy(float* losses, float* dlogits, const float* logits, const int* targets, const float* dlosses, int N, int V) {
    cuda_select_device();
    DevBuf z((size_t)N * V * 2), t(N * 4), l(N * 4), lse(N * 4), dl(N * 4);
    upload_bf16(z.b(), logits, (size_t)N * V);
    cudaCheck(cudaMemcpy(t.p, targets, N * 4, cudaMemcpyHostToDevice));
    up_f32(dl.f(), dlosses, N);
    crossentropy_forward_kernel<<<N, 512>>>(l.f(), lse.f(), z.b(), t.i(), V);
    cudaCheck(cudaGetLastError());
    crossentropy_backward_inplace_kernel<<<N, 512>>>(z.b(), lse.f(), t.i(), dl.f(), V);
    cudaCheck(cudaGetLastError());
    down_f32(losses, l.f(), N);
    download_bf16(dlogits, z.b(), (size_t)N * V);
}
// AdamW on host arrays (master, m, v updated in place; param = the bf16 parameters as fp32)
void cuda_op_adamw(float* master, float* param, float* m, float* v, const float* grad, size_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, float grad_scale, int step) {
    cuda_select_device();
    DevBuf w(n * 4), pb(n * 2), mb(n * 4), vb(n * 4), gb(n * 4);
    up_f32(w.f(), master, n);
    up_f32(mb.f(), m, n);
    up_f32(vb.f(), v, n);
    up_f32(gb.f(), grad, n);
    adamw_cuda(w.f(), pb.b(), mb.f(), vb.f(), gb.f(), n, lr, beta1, beta2, eps, weight_decay, grad_scale, step);
    down_f32(master, w.f(), n);
    download_bf16(param, pb.b(), n);
    down_f32(m, mb.f(), n);
    down_f32(v, vb.f(), n);
}
float cuda_op_grad_norm(const float* g, size_t n) {
    cuda_select_device();
    DevBuf gb(n * 4), part(NORM_BLOCKS * 4);
    up_f32(gb.f(), g, n);
    return grad_norm_cuda(gb.f(), n, part.f());
}
