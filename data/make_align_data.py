#!/usr/bin/env python3
"""make_align_data.py — synthetic SFT and DPO sets with checkable answers (Python stdlib only, fixed seed).

    python3 data/make_align_data.py --out data/align [--seed 1234] [--train 6000] [--heldout 300] [--pairs 3000]

Writes into --out (nothing here is committed; a rerun with the same flags writes the same bytes):

  sft_train.jsonl    {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
                     one to three turns; ~10% open with a system message; a share (--repetitive-share, 0.15)
                     of answers repeats its sentence 2-4 times: the noisy, repetitive SFT data the paper blames for
                     the repetition problem, which DPO is then asked to fix
  sft_heldout.jsonl  single-turn conversations whose problems never occur in any training file (exact-match eval:
                     the prompt is every message but the last, the reference is the last assistant message)
  dpo_train.jsonl    {"prompt": ..., "chosen": ..., "rejected": ...} (and ~20% as {"messages": [...], ...} with an
  dpo_heldout.jsonl  earlier turn): half pairs "correct vs wrong answer", half "concise vs repetitive answer"
  pretrain.txt       the training problems as plain prose ("Question: ... Answer: ..."), no chat template: text a
                     base model can be pre-trained on next to other text (held-out problems excluded)

Tasks (small numbers, so a small model learns them in minutes on a CPU):
  add      What is 23 + 45?                                  The answer is 68.
  sub      What is 45 - 23?                                  The answer is 22.
  count    How many times does b appear in: b a b c?         The answer is 2.
  reverse  Reverse the list: 3 1 4                           The answer is 4 1 3.
  sort     Sort the list: 5 2 8 1                            The answer is 1 2 5 8.
  max      What is the largest of 7 3 9?                     The answer is 9.
  lookup   Given a=3, b=7, c=1, what is b?                   The answer is 7.
"""
import argparse
import json
import os
import random
import sys

LETTERS = "abcdefgh"


def answer(text):
    return f"The answer is {text}."


def repetitive(ans, rng):
    return " ".join([ans] * rng.randint(2, 4))


# each task: rng -> (question, answer text, a wrong answer text)
def task_add(rng):
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    wrong = a + b + rng.choice([-2, -1, 1, 2, 10])
    return f"What is {a} + {b}?", str(a + b), str(max(wrong, 0) if wrong != a + b else a + b + 1)


def task_sub(rng):
    a = rng.randint(0, 59)
    b = rng.randint(0, a)
    wrong = a - b + rng.choice([-1, 1, 2])
    return f"What is {a} - {b}?", str(a - b), str(wrong if wrong >= 0 else a - b + 1)


def task_count(rng):
    n = rng.randint(3, 7)
    alphabet = LETTERS[:rng.randint(2, 4)]
    items = [rng.choice(alphabet) for _ in range(n)]
    x = rng.choice(items)
    c = items.count(x)
    return f"How many times does {x} appear in: {' '.join(items)}?", str(c), str(c + rng.choice([-1, 1]) if c > 1 else c + 1)


def shuffled_other(rng, xs, correct):
    for _ in range(20):
        w = xs[:]
        rng.shuffle(w)
        if w != correct:
            return w
    return list(reversed(correct)) if list(reversed(correct)) != correct else correct + [correct[0]]


def task_reverse(rng):
    xs = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
    r = xs[::-1]
    w = xs if xs != r else shuffled_other(rng, xs, r)
    return f"Reverse the list: {' '.join(map(str, xs))}", " ".join(map(str, r)), " ".join(map(str, w))


def task_sort(rng):
    xs = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
    s = sorted(xs)
    w = shuffled_other(rng, xs, s)
    return f"Sort the list: {' '.join(map(str, xs))}", " ".join(map(str, s)), " ".join(map(str, w))


def task_max(rng):
    xs = rng.sample(range(10), rng.randint(3, 5))
    m = max(xs)
    w = rng.choice([x for x in xs if x != m])
    return f"What is the largest of {' '.join(map(str, xs))}?", str(m), str(w)


def task_lookup(rng):
    keys = rng.sample(LETTERS, rng.randint(2, 4))
    vals = [rng.randint(0, 9) for _ in keys]
    i = rng.randrange(len(keys))
    others = [v for j, v in enumerate(vals) if v != vals[i]]
    w = rng.choice(others) if others else (vals[i] + 1) % 10
    pairs = ", ".join(f"{k}={v}" for k, v in zip(keys, vals))
    return f"Given {pairs}, what is {keys[i]}?", str(vals[i]), str(w)


TASKS = [task_add, task_sub, task_count, task_reverse, task_sort, task_max, task_lookup]

SYSTEMS = ["You are a helpful assistant.", "Answer briefly.", "You are a careful calculator."]


def problems(rng, n, exclude):
    """n distinct problems (question, answer, wrong) whose questions are not in `exclude`."""
    out, seen = [], set(exclude)
    while len(out) < n:
        q, a, w = rng.choice(TASKS)(rng)
        if q in seen:
            continue
        seen.add(q)
        out.append((q, a, w))
    return out


def write_jsonl(path, rows):
    with open(path + ".tmp", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path} ({len(rows)} lines)")


def sft_conversations(rng, probs, rep_share):
    """Conversations of 1-3 turns drawn from `probs` (each problem used once as a final turn)."""
    convs = []
    for i, (q, a, _) in enumerate(probs):
        msgs = []
        if rng.random() < 0.10:
            msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
        for _ in range(rng.choice([0, 0, 0, 1, 2])):   # earlier turns: other training problems
            q2, a2, _ = probs[rng.randrange(len(probs))]
            msgs += [{"role": "user", "content": q2}, {"role": "assistant", "content": answer(a2)}]
        reply = answer(a)
        if rng.random() < rep_share:
            reply = repetitive(reply, rng)
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": reply}]
        convs.append({"messages": msgs})
    return convs


def dpo_pairs(rng, probs, history):
    pairs = []
    for i, (q, a, w) in enumerate(probs):
        good = answer(a)
        bad = answer(w) if i % 2 == 0 else repetitive(good, rng)
        if rng.random() < 0.2 and history:
            q2, a2, _ = history[rng.randrange(len(history))]
            msgs = [{"role": "user", "content": q2}, {"role": "assistant", "content": answer(a2)},
                    {"role": "user", "content": q}]
            pairs.append({"messages": msgs, "chosen": good, "rejected": bad})
        else:
            pairs.append({"prompt": q, "chosen": good, "rejected": bad})
    return pairs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--train", type=int, default=6000, help="SFT training conversations")
    p.add_argument("--heldout", type=int, default=300, help="held-out SFT conversations and held-out DPO pairs")
    p.add_argument("--pairs", type=int, default=3000, help="DPO training pairs")
    p.add_argument("--repetitive-share", type=float, default=0.15, help="share of repetitive SFT answers")
    a = p.parse_args()
    if min(a.train, a.heldout, a.pairs) < 1 or not 0 <= a.repetitive_share <= 1:
        sys.exit("error: --train, --heldout, --pairs must be positive and --repetitive-share in [0, 1]")
    rng = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    # held-out problems first, so no training file can contain them
    held = problems(rng, 2 * a.heldout, ())
    held_sft, held_dpo = held[:a.heldout], held[a.heldout:]
    held_q = {q for q, _, _ in held}
    train = problems(rng, a.train, held_q)
    dpo = problems(rng, a.pairs, held_q)   # may overlap the SFT problems, never the held-out ones

    write_jsonl(os.path.join(a.out, "sft_train.jsonl"), sft_conversations(rng, train, a.repetitive_share))
    write_jsonl(os.path.join(a.out, "sft_heldout.jsonl"),
                [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer(ans)}]}
                 for q, ans, _ in held_sft])
    write_jsonl(os.path.join(a.out, "dpo_train.jsonl"), dpo_pairs(rng, dpo, train))
    write_jsonl(os.path.join(a.out, "dpo_heldout.jsonl"), dpo_pairs(rng, held_dpo, held_sft))
    path = os.path.join(a.out, "pretrain.txt")
    with open(path + ".tmp", "w") as f:
        for q, ans, _ in train + dpo:
            f.write(f"Question: {q}\nAnswer: {answer(ans)}\n\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path} ({len(train) + len(dpo)} problems)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
