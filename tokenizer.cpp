// tokenizer.cpp — byte-level BPE (being written: see the tokenizer issue).
#include "deepseek.h"

int cmd_tokenizer(int, char**) { die("tokenizer: not implemented yet"); }
