// train.cu — training: data loader, AdamW, learning-rate schedules, scaling-law planner, checkpoints,
// SFT and DPO objectives, data parallelism. (Being written: see the issues.)
#include "deepseek.h"

int cmd_plan(int, char**) { die("plan: not implemented yet"); }
int cmd_data(int, char**) { die("data: not implemented yet"); }
int cmd_train(int, char**) { die("train: not implemented yet"); }
int cmd_sft(int, char**) { die("sft: not implemented yet"); }
int cmd_dpo(int, char**) { die("dpo: not implemented yet"); }
