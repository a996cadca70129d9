// defines: model_forward_cpu, model_backward_cpu
// The model's forward and backward on the fast CPU path: model_forward_ref's and model_backward_ref's steps on the
// _cpu layers; model_forward / model_backward run them unless g_cpu_reference is set. Part of deepseek.cu
// (#included in its model section, after the references: it uses layer_acts, parallel_zero and the _cpu layers).
#pragma once

// The fast forward: model_forward_ref's steps on the _cpu layers, with two changes of form that leave the math as it
// is: each residual add runs inside the RMSNorm that follows it (residual_rmsnorm_forward_cpu: one pass over the row
// instead of two), and RoPE rotates by a cos/sin table made once per call (rope_table).
static void model_forward_cpu(Model* m, const int* inputs, const int* targets, int B, int T) {
    const Config& c = m->cfg;
    size_t BT = (size_t)B * T;
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    ParameterTensors& p = m->params;
    ActivationTensors& a = m->acts;
    std::vector<int> pos(BT);
    for (size_t i = 0; i < BT; i++) pos[i] = (int)(i % T);

    // token embedding → residual stream
    for (size_t i = 0; i < BT; i++) memcpy(a.residual + i * C, p.embed_tokens + (size_t)inputs[i] * C, C * sizeof(float));
    // the RoPE table for positions 0..T-1
    std::vector<float> rope_cos((size_t)T * (D / 2)), rope_sin((size_t)T * (D / 2));
    rope_table(rope_cos.data(), rope_sin.data(), T, D, c.rope_theta);
    // layer 0's input_layernorm (every later norm runs fused with the residual add before it)
    rmsnorm_forward_cpu(a.ln1, a.ln1_rstd, a.residual, p.input_layernorm, BT, C, c.rms_norm_eps);
    for (int l = 0; l < L; l++) {
        const LayerWeights<float> w = layer_weights(p, c, l);
        const LayerActs la = layer_acts(m, l);
        // attention block: q, k, v from ln1 (made by the norm that ended the previous layer), RoPE, attention, o_proj
        matmul_forward_cpu(la.q, la.ln1, w.q_proj, BT, C, QD);
        matmul_forward_cpu(la.k, la.ln1, w.k_proj, BT, C, KVD);
        matmul_forward_cpu(la.v, la.ln1, w.v_proj, BT, C, KVD);
        rope_apply_cpu(la.q, rope_cos.data(), rope_sin.data(), pos.data(), BT, H, D, 1.0f);
        rope_apply_cpu(la.k, rope_cos.data(), rope_sin.data(), pos.data(), BT, KV, D, 1.0f);
        attention_forward_cpu(la.atty, la.att, la.q, la.k, la.v, B, T, H, KV, D);
        matmul_forward_cpu(la.mid, la.atty, w.o_proj, BT, QD, C);
        // mid += x, and ln2 = post_attention_layernorm(mid)
        residual_rmsnorm_forward_cpu(la.mid, la.ln2, la.ln2_rstd, la.x, w.post_attention_layernorm, BT, C, c.rms_norm_eps);
        // MLP block: gate and up projections, SwiGLU, down_proj
        matmul_forward_cpu(la.gate, la.ln2, w.gate_proj, BT, C, F);
        matmul_forward_cpu(la.up, la.ln2, w.up_proj, BT, C, F);
        swiglu_forward_cpu(la.act, la.gate, la.up, BT * F);
        matmul_forward_cpu(la.out, la.act, w.down_proj, BT, F, C);
        // out += mid, and the next norm: the next layer's input_layernorm, or the final norm
        if (l + 1 < L) {
            const LayerActs next = layer_acts(m, l + 1);
            residual_rmsnorm_forward_cpu(la.out, next.ln1, next.ln1_rstd, la.mid, layer_weights(p, c, l + 1).input_layernorm,
                                         BT, C, c.rms_norm_eps);
        } else {
            residual_rmsnorm_forward_cpu(la.out, a.lnf, a.lnf_rstd, la.mid, p.norm, BT, C, c.rms_norm_eps);
        }
    }
    // lm_head and the per-token loss
    matmul_forward_cpu(a.logits, a.lnf, p.lm_head, BT, C, V);
    if (targets) crossentropy_forward_cpu(a.losses, a.logits, targets, BT, V);
}

// The fast backward: model_backward_ref's steps on the _cpu backwards, which write their activation gradients (an
// Accum::Add where two paths meet) instead of adding into zeroed scratch, and fuse the residual's gradient into
// the RMSNorm backward (dskip).
static void model_backward_cpu(Model* m, const float* dlosses) {
    const Config& c = m->cfg;
    int B = m->B, T = m->T, BT = B * T;
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    ParameterTensors& p = m->params;
    ParameterTensors& g = m->grads;
    ActivationTensors& a = m->acts;
    std::vector<int> pos(BT);
    for (int i = 0; i < BT; i++) pos[i] = i % T;
    std::vector<float> rope_cos((size_t)T * (D / 2)), rope_sin((size_t)T * (D / 2));
    rope_table(rope_cos.data(), rope_sin.data(), T, D, c.rope_theta);
    // scratch for the activation gradients of one layer at a time (each is overwritten before it is read); kept
    // between calls, so that a training step does not fault in ~50 MB of fresh pages every time
    static thread_local std::vector<float> dlogits, dres, dmid, dln, dq, dk, dv, datty, dact, dgate, dup;
    std::pair<std::vector<float>*, size_t> scratch[] = {{&dlogits, (size_t)BT * V}, {&dres, (size_t)BT * C},
        {&dmid, (size_t)BT * C}, {&dln, (size_t)BT * C}, {&dq, (size_t)BT * QD}, {&dk, (size_t)BT * KVD}, {&dv, (size_t)BT * KVD},
        {&datty, (size_t)BT * QD}, {&dact, (size_t)BT * F}, {&dgate, (size_t)BT * F}, {&dup, (size_t)BT * F}};
    for (auto& s : scratch) {
        reserve_huge(s.first, s.second);  // (only when it grows; the contents are overwritten before they are read)
        s.first->resize(s.second);
    }

    // the loss, lm_head and the final norm
    crossentropy_backward_cpu(dlogits.data(), a.logits, a.losses, m->targets.data(), dlosses, BT, V);
    matmul_backward_cpu(dln.data(), g.lm_head, dlogits.data(), a.lnf, p.lm_head, BT, C, V, Accum::Overwrite);
    rmsnorm_backward_cpu(dres.data(), nullptr, g.norm, dln.data(), a.residual + (size_t)L * BT * C, p.norm, a.lnf_rstd, BT, C);
    for (int l = L - 1; l >= 0; l--) {
        const LayerWeights<float> w = layer_weights(p, c, l), gw = layer_weights(g, c, l);
        const LayerActs la = layer_acts(m, l);
        // MLP block: dres is the gradient of the layer's output; it flows to mid directly and through the MLP
        matmul_backward_cpu(dact.data(), gw.down_proj, dres.data(), la.act, w.down_proj, BT, F, C, Accum::Overwrite);
        swiglu_backward_cpu(dgate.data(), dup.data(), dact.data(), la.gate, la.up, (size_t)BT * F);
        matmul_backward_cpu(dln.data(), gw.gate_proj, dgate.data(), la.ln2, w.gate_proj, BT, C, F, Accum::Overwrite);
        matmul_backward_cpu(dln.data(), gw.up_proj, dup.data(), la.ln2, w.up_proj, BT, C, F, Accum::Add);
        rmsnorm_backward_cpu(dmid.data(), dres.data(), gw.post_attention_layernorm, dln.data(), la.mid, w.post_attention_layernorm,
                             la.ln2_rstd, BT, C);
        // attention block
        matmul_backward_cpu(datty.data(), gw.o_proj, dmid.data(), la.atty, w.o_proj, BT, QD, C, Accum::Overwrite);
        parallel_zero(dq.data(), dq.size());
        parallel_zero(dk.data(), dk.size());
        parallel_zero(dv.data(), dv.size());
        attention_backward_cpu(dq.data(), dk.data(), dv.data(), datty.data(), la.atty, la.att, la.q, la.k, la.v, B, T, H, KV, D);
        rope_apply_cpu(dq.data(), rope_cos.data(), rope_sin.data(), pos.data(), BT, H, D, -1.0f);
        rope_apply_cpu(dk.data(), rope_cos.data(), rope_sin.data(), pos.data(), BT, KV, D, -1.0f);
        matmul_backward_cpu(dln.data(), gw.q_proj, dq.data(), la.ln1, w.q_proj, BT, C, QD, Accum::Overwrite);
        matmul_backward_cpu(dln.data(), gw.k_proj, dk.data(), la.ln1, w.k_proj, BT, C, KVD, Accum::Add);
        matmul_backward_cpu(dln.data(), gw.v_proj, dv.data(), la.ln1, w.v_proj, BT, C, KVD, Accum::Add);
        rmsnorm_backward_cpu(dres.data(), dmid.data(), gw.input_layernorm, dln.data(), la.x, w.input_layernorm, la.ln1_rstd, BT, C);
    }
    // embedding: scatter-add, serial over tokens so repeated tokens add in a fixed order
    for (int i = 0; i < BT; i++) {
        float* dst = g.embed_tokens + (size_t)m->inputs[i] * C;
        const float* src = dres.data() + (size_t)i * C;
        #pragma omp simd
        for (int j = 0; j < C; j++) dst[j] += src[j];
    }
}
