#!/usr/bin/env python3
# Tokenizer fixtures from Hugging Face tokenizers (the peer), written to tests/fixtures/tokenizer/:
#   multilingual_ids.txt   HF's ids (no BOS) for data/multilingual_test.txt with the imported DeepSeek tokenizer.json
#   bible_kjv.json         the King James Bible (`bible "Gen1:1-Rev22:21"`, Debian bible-kjv): the command, the text's
#                          size and FNV-1a 64, HF's id count and the FNV-1a 64 of the ids (little-endian uint32 each);
#                          the text itself is never committed
#   train_merges.json      BpeTrainer's merges on data/multilingual_test.txt with DeepSeek's pre-tokenizer, for two
#                          vocabulary sizes
# The tokenizer.json under test is made by our own binary (`deepseek tokenizer import-gguf`), so this also checks
# that HF loads what we write and agrees with the released ids in data/vocab/deepseek-llm.out.
# Run from the repository root: .venv/bin/python tests/reference/fixtures_tokenizer.py (make fixtures runs it) [--bin ./deepseek]
import argparse, json, os, shutil, subprocess, sys, tempfile
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

OUT = "tests/fixtures/tokenizer"
GGUF = "data/vocab/deepseek-llm.gguf"
TEXT = "data/multilingual_test.txt"
BIBLE_CMD = ["env", "COLUMNS=80", "bible", "Gen1:1-Rev22:21"]   # COLUMNS sets the line width
TRAIN_SIZES = [600, 2000]

def fnv1a64_ids(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little"):
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h

def fnv1a64_bytes(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("DEEPSEEK_BIN", "./deepseek"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "tokenizer.json")
        subprocess.run([args.bin, "tokenizer", "import-gguf", GGUF, "--out", path], check=True)
        tok = Tokenizer.from_file(path)

        # the released ids: HF on our imported file must give them
        inp = open("data/vocab/deepseek-llm.inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")[:-1]
        out = open("data/vocab/deepseek-llm.out").read().split("\n")
        bad = sum(tok.encode(t, add_special_tokens=False).ids != [int(x) for x in out[i].split()] for i, t in enumerate(inp))
        print(f"deepseek-llm.inp: {len(inp) - bad}/{len(inp)} texts encode to deepseek-llm.out with HF on the imported file")
        if bad: sys.exit("imported tokenizer.json disagrees with the released ids")

        text = open(TEXT, encoding="utf-8", newline="").read()
        ids = tok.encode(text, add_special_tokens=False).ids
        with open(os.path.join(OUT, "multilingual_ids.txt"), "w") as f:
            f.write(" ".join(map(str, ids)) + "\n")
        print(f"{TEXT}: {len(text.encode('utf-8'))} bytes -> {len(ids)} ids")

        if shutil.which("bible"):
            raw = subprocess.run(BIBLE_CMD, check=True, capture_output=True).stdout
            btext = raw.decode("utf-8")
            bids = tok.encode(btext, add_special_tokens=False).ids
            rec = {"command": BIBLE_CMD, "text_bytes": len(raw), "text_fnv1a64": fnv1a64_bytes(raw),
                   "ids": len(bids), "ids_fnv1a64": fnv1a64_ids(bids),
                   "note": "ids: HF tokenizers, imported DeepSeek tokenizer.json, no BOS; FNV-1a 64 over little-endian uint32 ids"}
            json.dump(rec, open(os.path.join(OUT, "bible_kjv.json"), "w"), indent=1)
            print(f"bible: {len(raw)} bytes -> {len(bids)} ids")
        else:
            print("bible (Debian bible-kjv) not installed: bible_kjv.json left as it is")

        # BpeTrainer with DeepSeek's pre-tokenizer, the 256-byte alphabet and BOS/EOS
        specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
        runs = []
        for vs in TRAIN_SIZES:
            t = Tokenizer(models.BPE())
            t.pre_tokenizer = tok.pre_tokenizer
            tr = trainers.BpeTrainer(vocab_size=vs, min_frequency=0, show_progress=False, special_tokens=specials,
                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            t.train([TEXT], tr)
            m = json.loads(t.to_str())["model"]
            merges = [mg if isinstance(mg, list) else mg.split(" ") for mg in m["merges"]]
            runs.append({"vocab_size": vs, "merges": merges})
            print(f"train vocab_size={vs}: {len(merges)} merges")
            if vs == TRAIN_SIZES[0]:
                base = json.loads(t.to_str())
        json.dump({"corpus": TEXT, "special_tokens": specials, "runs": runs}, open(os.path.join(OUT, "train_merges.json"), "w"),
                  ensure_ascii=False)
        variants(base, text)
    finally:
        shutil.rmtree(tmp)

# The other tokenizer.json features, each a variant of the small trained tokenizer, with HF's ids for a sample
# of the test text (tokenizer files variant_NAME.json, ids in variants_ids.json).
def variants(base, text):
    sample = text[:6000] + " <eos> <eos>x x<eos>  <eos>  [MASK] un[MASK]able aNEWb\naNEWb 12345 ½ ٣"
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    def split(pattern, behavior, invert=False, regex=True):
        return {"type": "Split", "pattern": {"Regex" if regex else "String": pattern}, "behavior": behavior, "invert": invert}
    def seq(*steps):
        return {"type": "Sequence", "pretokenizers": list(steps)}
    def added(content, id_, special=False, **kw):
        d = {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": not special, "special": special}
        d.update(kw)
        return d
    base["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    n = max(base["model"]["vocab"].values()) + 1
    V = {
        "gpt2_bytelevel_regex": {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}},
        "split_removed": {"pre_tokenizer": seq(split(" ", "Removed", regex=False), bl)},
        "split_merged_previous": {"pre_tokenizer": seq(split(r"\s+", "MergedWithPrevious"), bl)},
        "split_merged_next": {"pre_tokenizer": seq(split(r"[,.!?]", "MergedWithNext"), bl)},
        "split_contiguous_invert": {"pre_tokenizer": seq(split(r"\p{L}", "Contiguous", invert=True), bl)},
        "split_isolated_empty_matches": {"pre_tokenizer": seq(split(r"\b", "Isolated"), split(r"x*", "Isolated"), bl)},
        "digits_grouped": {"pre_tokenizer": seq(split(r"\s?\p{L}+", "Isolated"), {"type": "Digits", "individual_digits": False}, bl)},
        "ignore_merges": {"model.ignore_merges": True},
        "merges_as_strings": {"model.merges_str": True},
        "added_tokens_options": {"added_tokens+": [added("<eos>", n + 10, special=True, lstrip=True, rstrip=True),
                                                   added("[MASK]", n + 11, single_word=True),
                                                   added("NEW", n + 12), added("x", n + 13, special=True, normalized=True)]},
    }
    ids = {}
    for name, change in V.items():
        j = json.loads(json.dumps(base))
        for k, v in change.items():
            if k == "model.ignore_merges":
                j["model"]["ignore_merges"] = v
                # a word in the vocab that the merges would not make: ignore_merges must take it whole
                j["model"]["vocab"]["aNEWb"] = n + 20
            elif k == "model.merges_str":
                j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
            elif k == "added_tokens+":
                j["added_tokens"] += v
            else:
                j[k] = v
        tok = Tokenizer.from_str(json.dumps(j))
        ids[name] = tok.encode(sample, add_special_tokens=False).ids
        with open(os.path.join(OUT, f"variant_{name}.json"), "w") as f:
            f.write(tok.to_str(pretty=False) + "\n")
        print(f"variant {name}: {len(ids[name])} ids")
    json.dump({"sample": sample, "ids": ids}, open(os.path.join(OUT, "variants_ids.json"), "w"), ensure_ascii=False)

if __name__ == "__main__":
    main()
