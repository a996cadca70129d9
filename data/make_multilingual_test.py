#!/usr/bin/env python3
# Writes data/multilingual_test.txt: the tokenizer's test text (≈ 60 KB), composed here from phrases written
# for this project (no third-party text): English prose, source code, long numbers, Chinese, Japanese, Korean,
# Cyrillic, Arabic, Greek, Hindi, Thai, German/Nordic letters (ü ø ö are DeepSeek added tokens), emoji with
# zero-width joiners, whitespace runs, tabs, CRLF, and the special-token strings. Deterministic (fixed seed).
import random, sys, os

EN = [
    "The quick tokenizer splits text into pieces before any merge is applied.",
    "We measured the throughput twice, once cold and once with a warm cache.",
    "It's not the size of the vocabulary that matters; it's how you've used it.",
    "She said: \"Don't forget the trailing spaces,\" and walked away.",
    "A byte-level model never meets an unknown character, only unknown merges.",
    "In 1969, about 600 million people watched the landing; in 2024 far more watched replays.",
    "Prices rose by 3.75% (from $12,499.99 to $12,968.73) over the quarter.",
    "The river bends twice near the old mill, then runs straight to the sea.",
    "Numbers like 3.14159265358979 and 2.718281828 are split into single digits.",
    "Why would anyone write    four spaces    between words?  Because tests should.",
    "e-mail: someone@example.org, web: https://example.com/path?q=tokens&n=42#frag",
    "He'll arrive at 07:45 on 2025-03-14, unless the train is late again.",
    "UPPERCASE, lowercase, CamelCase, snake_case and kebab-case all appear here.",
]
CODE = [
    "int main(int argc, char** argv) {\n\tfor (int i = 0; i < argc; i++) printf(\"%s\\n\", argv[i]);\n\treturn 0;\n}\n",
    "def merge(words, pair):\n    a, b = pair\n    for w in words:\n        i = 0\n        while i < len(w) - 1:\n            if w[i] == a and w[i + 1] == b:\n                w[i:i + 2] = [a + b]\n            i += 1\n",
    "const x = [1, 2, 3].map((v) => v * 2).filter(v => v > 2); // => [4, 6]\n",
    "SELECT id, name FROM tokens WHERE rank < 100 ORDER BY rank DESC;\n",
    "#include <vector>\nstd::vector<int> ids{100000, 17464, 1843};\nauto n = ids.size(); /* three */\n",
    "if (x != y && (p || !q)) { y <<= 2; z ^= 0xFF; } else { z = ~z; }\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n",
    "<div class=\"note\"><p>Hello &amp; welcome</p></div>\n",
    "$ ./deepseek tokenizer encode --tokenizer tokenizer.json --bos < input.txt\n",
]
ZH = ["今天天气很好，我们去公园散步吧。", "分词器先把文本切成小段，然后再合并字节。", "这个模型在两万亿个词元上训练。",
      "我喜欢读书，也喜欢写代码。", "北京和上海是中国最大的两个城市。", "请把这段话翻译成英文：“学而时习之”。"]
JA = ["今日はとても良い天気ですね。", "トークナイザーはテキストを小さな単位に分けます。", "私はコーヒーよりお茶が好きです。",
      "東京駅で友達と待ち合わせをしました。", "カタカナとひらがなと漢字が混ざっています。"]
KO = ["안녕하세요, 만나서 반갑습니다.", "토크나이저는 문장을 작은 조각으로 나눕니다.", "오늘 저녁에는 비가 올 것 같아요.",
      "한국어 문장에는 띄어쓰기가 있습니다."]
RU = ["Привет, как у тебя дела сегодня?", "Токенизатор делит текст на небольшие части.", "Мы вернёмся домой в четверг вечером.",
      "Ёжик в тумане искал свою лошадку.", "Сколько стоит этот билет до Новосибирска?"]
UK = ["Добрий вечір, ми з України.", "Її ґанок був жовтим і теплим."]
AR = ["مرحبا بكم في هذا الاختبار.", "يقسم المحلل النص إلى أجزاء صغيرة.", "الطقس جميل اليوم في المدينة.", "العدد ١٢٣٤٥ مكتوب بالأرقام العربية."]
EL = ["Καλημέρα, τι κάνεις σήμερα;", "Ο διαχωριστής χωρίζει το κείμενο σε κομμάτια.", "Η θάλασσα ήταν ήρεμη και γαλάζια.", "ΑΛΦΑ, βήτα, γάμμα, δέλτα — ωμέγα."]
HI = ["नमस्ते, आप कैसे हैं?", "यह वाक्य हिंदी में लिखा गया है।"]
TH = ["สวัสดีครับ วันนี้อากาศดีมาก", "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ"]
EU = ["Der Führer des Vereins fährt über die Brücke nach Köln.", "Ærø og Søren spiste smørrebrød på øen.",
      "À bientôt, dit-il en français, ça va très bien, merci!", "Ðeir hǫfðu þrjú skip, sagði Þórður.",
      "Ú, ý, þ, ÿ, õ, û, ù, Á, ÷: the letters DeepSeek added as tokens.", "Straße, Größe, Übermut, Öl, Ärger."]
EMOJI = ["👩‍👩‍👧‍👦", "👨🏽‍💻", "🏳️‍🌈", "😶‍🌫️", "❤️‍🔥", "🧑🏿‍🚀", "👍🏻", "🇯🇵", "🦙", "✅", "🚀", "🎉🎉🎉", "☕️"]
MISC = ["x² + y² = z²", "∀ε>0 ∃δ>0: |x−a|<δ ⇒ |f(x)−f(a)|<ε", "½ ¾ ⅓ ① ② Ⅻ ⁴²", "café naïve résumé coöperate",
        "e\u0301 (combining acute) and é (precomposed)", "ＦＵＬＬ　ＷＩＤＴＨ　ｔｅｘｔ！？", "「引用」『二重』【括弧】",
        "\u00a0non-breaking\u00a0spaces\u2009thin\u3000ideographic", "zero\u200bwidth\u200cjoiners\u200d", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𐐷𐑌"]
SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>User: hi\n\nAssistant:",
           "<|endoftext|>", "<s>", "</s>", "<｜end▁of▁sentence｜><｜end▁of▁sentence｜>"]
WS = ["  ", "   ", "\t", "\t\t", " \t ", "\r\n", "\n\n", "\n \n", "        ", "\r\n\r\n", " \n", "\t\n"]

def number(r):
    k = r.randrange(6)
    if k == 0: return str(r.randrange(10**18, 10**19))
    if k == 1: return f"{r.randrange(1000):,}.{r.randrange(100):02d}"
    if k == 2: return f"{r.random() * 1e6:.6f}"
    if k == 3: return "-" + str(r.randrange(10**9))
    if k == 4: return f"{r.randrange(1, 13):02d}/{r.randrange(1, 29):02d}/{r.randrange(1900, 2100)}"
    return "0x%08X" % r.randrange(2**32)

def paragraph(r):
    pools = [EN, EN, EN, ZH, JA, KO, RU, UK, AR, EL, HI, TH, EU, MISC]
    parts = []
    for _ in range(r.randrange(3, 9)):
        pool = r.choice(pools)
        s = r.choice(pool)
        if r.random() < 0.3: s += " " + number(r)
        if r.random() < 0.2: s += " " + r.choice(EMOJI)
        if r.random() < 0.08: s += r.choice(SPECIAL)
        parts.append(s)
        parts.append(r.choice(WS) if r.random() < 0.25 else " ")
    return "".join(parts)

def main():
    r = random.Random(20240102)
    out = []
    size = 0
    while size < 60000:
        k = r.random()
        if k < 0.15: block = r.choice(CODE)
        elif k < 0.2: block = " ".join(number(r) for _ in range(r.randrange(2, 8))) + "\n"
        elif k < 0.23: block = "".join(r.choice(EMOJI) for _ in range(r.randrange(2, 12))) + "\n"
        else: block = paragraph(r) + r.choice(["\n", "\n\n", "\r\n", "\n\n\n", "   \n"])
        out.append(block)
        size += len(block.encode("utf-8"))
    text = "".join(out) + "".join(SPECIAL) + "\n" + "".join(EU) + " " * 40 + "\n"
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "multilingual_test.txt")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    print(f"wrote {path}: {len(text.encode('utf-8'))} bytes")

if __name__ == "__main__":
    main()
