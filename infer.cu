// infer.cu — generation: KV cache, sampling, chat template, REPL, evaluation. (Being written: see the issues.)
#include "deepseek.h"

int cmd_eval(int, char**) { die("eval: not implemented yet"); }
int cmd_generate(int, char**) { die("generate: not implemented yet"); }
int cmd_chat(int, char**) { die("chat: not implemented yet"); }
