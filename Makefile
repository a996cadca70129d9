# deepseek — the DeepSeek LLM recipe in a few readable C++/CUDA files.
#
#   make            ./deepseek (CUDA + CPU when nvcc is on PATH, else CPU-only)
#   make cpu        ./deepseek, CPU-only, with g++
#   make test       build and run the whole test suite (last line: "N passed, N failed")
#   make test-asan  the suite again, CPU-only, under AddressSanitizer + UBSan
#   make demo       the main job: train a small DeepSeek model on the King James Bible
#   make sweep      the paper's scaling-law study on the same corpus (deepseek sweep run, ~20 min on 2 cores)
#   make fixtures   regenerate tests/fixtures from PyTorch / transformers / tokenizers (venv from PyPI)
#   make bench      speed, side by side with the peers (and make check-gguf: our GGUF export in llama.cpp)
#   make deps       install the Debian packages the build, tests and demo need
#   make gpu-check  GPU validation + benchmarks (tests/gpu_check.sh)
#   make fuzz       libFuzzer (clang, ASan + UBSan) on every parser, FUZZ_SECONDS (60) each (tests/fuzz/run_fuzz.sh)

CXX        ?= g++
NVCC       ?= nvcc
ARCH       ?= native
OPT        ?= -O3
CUDA_HOME  ?= /usr/local/cuda
CUDA_ARCHS ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90

WARN      := -Wall -Wextra -Wno-unused-parameter -Wno-unused-function
# -fno-math-errno: nothing reads errno after sqrtf/expf, and without it GCC will not vectorise a loop that calls
# sqrtf (AdamW ran scalar). IEEE results are unchanged: sqrt is correctly rounded either way.
# -mprefer-vector-width=512: the vector width GCC gives `omp simd` reductions (and so their summation order and
# roundings) is the same on every AVX-512 host; left to -march=native, GCC 12 tunes one Xeon for 256-bit vectors
# and another CPU otherwise, and the fp32 fast path's gradients then differ from host to host in the last bits
# (by up to 2x in their error against transformers). Ignored where the CPU has no 512-bit vectors.
VEC       := -mprefer-vector-width=512
CXXFLAGS  := -std=c++17 $(OPT) -march=$(ARCH) $(VEC) -fno-math-errno -fopenmp -g $(WARN) $(EXTRA_CXXFLAGS)
LDLIBS    := -lonig -fopenmp -lpthread
# nvcc's front end: 177 = unused static function (g++ gets -Wno-unused-function), 1675 = `#pragma GCC ...`
# meant for the host compiler, which still receives it
NVCCFLAGS := -std=c++17 $(OPT) $(CUDA_ARCHS) -DDEEPSEEK_CUDA --diag-suppress 177,1675 -Xcompiler "-march=$(ARCH) $(VEC) -fno-math-errno -fopenmp -g $(WARN)"
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcudart -lcublas -lcublasLt -lnccl
# NCCL=0: a CUDA build without NCCL (one GPU; data-parallel GPU ranks say they need NCCL) for a machine without it
NCCL ?= 1
ifeq ($(NCCL),0)
NVCCFLAGS += -DDEEPSEEK_NO_NCCL
CUDA_LIBS := $(filter-out -lnccl,$(CUDA_LIBS))
endif
# WERROR=1 (CI): any compiler warning, g++'s or nvcc's (sm_80 and sm_90 alike), fails the build
ifeq ($(WERROR),1)
CXXFLAGS  += -Werror
NVCCFLAGS += -Werror all-warnings -Xcompiler -Werror
endif

# MPI (data-parallel ranks): the flags OpenMPI's wrapper would add, taken from `mpicxx --showme` so every variant
# (g++, nvcc, ASan) compiles train.cu with -DDEEPSEEK_MPI; without an MPI install the build is single-process.
MPICXX    ?= mpicxx
MPI_INC   := $(shell $(MPICXX) --showme:incdirs 2>/dev/null)
MPI_LIBD  := $(shell $(MPICXX) --showme:libdirs 2>/dev/null)
# MPI=0: a build without MPI (one process), also where mpicxx is installed
HAVE_MPI  := $(if $(filter 0,$(MPI)),,$(shell command -v $(MPICXX) 2>/dev/null))
ifneq ($(HAVE_MPI),)
MPI_FLAGS := -DDEEPSEEK_MPI $(addprefix -I,$(MPI_INC))
CXXFLAGS  += $(MPI_FLAGS)
NVCCFLAGS += $(MPI_FLAGS)
LDLIBS    += $(addprefix -L,$(MPI_LIBD)) -lmpi
endif

SRCS_CU   := deepseek.cu train.cu infer.cu
TEST_SRCS := $(wildcard tests/*.cpp)
HDRS      := deepseek.h util.h $(wildcard kernels/*)

HAVE_NVCC := $(shell command -v $(NVCC) 2>/dev/null)
ifeq ($(HAVE_NVCC),)
VARIANT := cpu
else
VARIANT := cuda
endif
PYTHON ?= python3
VENV   := .venv

.PHONY: check-isa all cpu cuda test test-asan demo sweep fixtures bench deps gpu-check clean print-variant FORCE
all: deepseek

# ./deepseek is a copy of the variant's binary; `make cpu` forces the CPU-only one.
# (the copy goes through a temporary name: replacing a running ./deepseek in place fails with "Text file busy")
deepseek: build/$(VARIANT)/deepseek FORCE
	@cmp -s $< $@ || { cp $< $@.tmp && mv -f $@.tmp $@ && echo "built ./deepseek ($(VARIANT))"; }
cpu: build/cpu/deepseek
	@cp $< deepseek.tmp && mv -f deepseek.tmp deepseek && echo "built ./deepseek (cpu)"
cuda: build/cuda/deepseek
	@cp $< deepseek.tmp && mv -f deepseek.tmp deepseek && echo "built ./deepseek (cuda)"

# ---- object and link rules, one template for the three variants:
#   cpu   the .cu files are plain C++ to g++
#   cuda  nvcc compiles the .cu files (host code through g++), tokenizer.cpp and the tests stay g++
#   asan  CPU-only, -O1, ASan + UBSan
# The test binary links deepseek.o with main() weakened (objcopy), so the test runner's main() wins and the
# largest file is compiled once.
# $(1) variant, $(2) the .cu compile, $(3) the .cpp compile, $(4) the link, $(5) the link's extra libraries,
# $(6) what the .cu objects depend on besides the sources (the CUDA variant: the GPU architectures they were built for)
define VARIANT_RULES
build/$(1)/%.o: %.cu $$(HDRS) $(6)
	@mkdir -p $$(@D)
	$(2) -c $$< -o $$@
build/$(1)/%.o: %.cpp $$(HDRS)
	@mkdir -p $$(@D)
	$(3) -c $$< -o $$@
build/$(1)/deepseek_nomain.o: build/$(1)/deepseek.o
	objcopy --weaken-symbol=main $$< $$@
build/$(1)/deepseek: build/$(1)/deepseek.o build/$(1)/train.o build/$(1)/infer.o build/$(1)/tokenizer.o build/$(1)/sweep.o
	$(4) $$^ -o $$@ $(5)
build/$(1)/test_deepseek: build/$(1)/deepseek_nomain.o build/$(1)/train.o build/$(1)/infer.o build/$(1)/tokenizer.o build/$(1)/sweep.o $$(TEST_SRCS:%.cpp=build/$(1)/%.o)
	$(4) $$^ -o $$@ $(5)
endef

# tests/test_cuda_emu.cpp compiles the CUDA kernels' source with g++ (an emulation): their `#pragma unroll` is nvcc's
build/cpu/tests/test_cuda_emu.o build/cuda/tests/test_cuda_emu.o: CXXFLAGS += -Wno-unknown-pragmas
build/cpu/tests/test_cuda_emu.o build/cuda/tests/test_cuda_emu.o build/asan/tests/test_cuda_emu.o: tests/cuda_emu.h
$(foreach v,cpu cuda asan,$(TEST_SRCS:%.cpp=build/$(v)/%.o)): tests/test_util.h
build/asan/tests/test_cuda_emu.o: ASAN_FLAGS += -Wno-unknown-pragmas
ASAN_FLAGS := -std=c++17 -O1 -march=$(ARCH) $(VEC) -fno-math-errno -fopenmp -g $(WARN) -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ASAN_FLAGS += $(MPI_FLAGS)
$(eval $(call VARIANT_RULES,cpu,$$(CXX) $$(CXXFLAGS) -x c++,$$(CXX) $$(CXXFLAGS),$$(CXX) $$(CXXFLAGS),$$(LDLIBS)))
$(eval $(call VARIANT_RULES,cuda,$$(NVCC) $$(NVCCFLAGS),$$(CXX) $$(CXXFLAGS) -DDEEPSEEK_CUDA,$$(CXX) $$(CXXFLAGS),$$(LDLIBS) $$(CUDA_LIBS),build/cuda/.archs))
# build/cuda/.archs holds the CUDA_ARCHS and NCCL setting the CUDA objects were compiled with; rewritten only when they
# change (make CUDA_ARCHS=... as tests/gpu_check.sh does for one GPU), so a change rebuilds them and nothing else does
CUDA_STAMP := $(CUDA_ARCHS) NCCL=$(NCCL)
build/cuda/.archs: FORCE
	@mkdir -p $(@D)
	@echo '$(CUDA_STAMP)' | cmp -s - $@ || echo '$(CUDA_STAMP)' > $@
$(eval $(call VARIANT_RULES,asan,$$(CXX) $$(ASAN_FLAGS) -x c++,$$(CXX) $$(ASAN_FLAGS),$$(CXX) $$(ASAN_FLAGS),$$(LDLIBS)))

# The suite runs from the repository root; CLI tests run the binary named by DEEPSEEK_BIN.
# Both targets first install missing Debian packages (quiet when all are present), so they work on a fresh machine.
test:
	@bash tests/install_deps.sh
	@$(MAKE) --no-print-directory deepseek build/$(VARIANT)/test_deepseek $(if $(filter cuda,$(VARIANT)),build/bench/bench_gpu)
	@DEEPSEEK_BIN=./deepseek OMP_NUM_THREADS=2 ./build/$(VARIANT)/test_deepseek $(TEST_ARGS)

test-asan:
	@bash tests/install_deps.sh
	@$(MAKE) --no-print-directory build/asan/deepseek build/asan/test_deepseek
	@ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 DEEPSEEK_BIN=./build/asan/deepseek \
	  OMP_NUM_THREADS=2 DEEPSEEK_ASAN=1 ./build/asan/test_deepseek $(TEST_ARGS)

# Every ISA branch of the CPU kernels compiles, whatever this host's CPU: plain x86-64, AVX2 (x86-64-v3), AVX-512
# (Skylake), AVX-512 VNNI (Ice Lake), AVX-512 BF16 (Sapphire Rapids). -march=native builds only this host's branch,
# so a mistake in another CPU's branch would otherwise first show on a stranger's machine. Syntax only: nothing runs.
ISA_ARCHES := x86-64 x86-64-v3 skylake-avx512 icelake-server sapphirerapids
ISA_SRCS   := deepseek.cu infer.cu tests/bench/bench_cpu.cpp   # the files with ISA branches (kernels/* included)
check-isa:
	@for a in $(ISA_ARCHES); do echo "== -march=$$a"; for f in $(ISA_SRCS); do \
	  $(CXX) $(subst -march=$(ARCH),-march=$$a,$(CXXFLAGS)) -Werror -Wno-unknown-pragmas -fsyntax-only -x c++ $$f || exit 1; done; done

deps:
	@bash tests/install_deps.sh
print-variant:   # cpu or cuda: the variant `make` and `make test` build here (for .ci/run)
	@echo $(VARIANT)

# Fixtures and benchmarks use the peers (PyTorch, transformers, tokenizers, TRL, llama.cpp) from a venv pinned by
# requirements.txt, made on first use.
$(VENV)/.done: tests/reference/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r tests/reference/requirements.txt
	@touch $@
fixtures: $(VENV)/.done deepseek
	$(VENV)/bin/python tests/reference/make_fixtures.py

# ---- CPU speed (tests/bench/bench_cpu.cpp): FMA peak, our GEMM vs OpenBLAS, training tokens/s vs PyTorch.
# OpenBLAS (Debian libopenblas-dev) is linked into this benchmark only, never into ./deepseek.
BENCH_THREADS ?= 2
build/bench/bench_cpu: tests/bench/bench_cpu.cpp build/cpu/deepseek_nomain.o build/cpu/train.o build/cpu/infer.o build/cpu/tokenizer.o build/cpu/sweep.o $(HDRS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(filter-out $(HDRS),$^) -o $@ $(LDLIBS) -lopenblas
# two runs: the GEMMs beside OpenBLAS (passive OpenMP waits), then training beside PyTorch, each in its default environment
bench-cpu: build/bench/bench_cpu $(VENV)/.done
	OMP_NUM_THREADS=$(BENCH_THREADS) ./build/bench/bench_cpu --threads $(BENCH_THREADS) --no-train $(BENCH_ARGS)
	OMP_NUM_THREADS=$(BENCH_THREADS) ./build/bench/bench_cpu --threads $(BENCH_THREADS) --no-gemm --sweep $(BENCH_ARGS)
bench: bench-cpu
.PHONY: bench-cpu

# ---- GPU speed (tests/bench/bench_gpu.cpp, run by tests/gpu_check.sh): training tokens/s and MFU, batch-1 decode
# tokens/s beside the HBM bound. It links the CUDA objects, so it needs nvcc; `make test` builds it in the CUDA variant.
build/bench/bench_gpu: tests/bench/bench_gpu.cpp build/cuda/deepseek_nomain.o build/cuda/train.o build/cuda/infer.o build/cuda/tokenizer.o build/cuda/sweep.o $(HDRS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -DDEEPSEEK_CUDA $(filter-out $(HDRS),$^) -o $@ $(LDLIBS) $(CUDA_LIBS)

gpu-check:
	@bash tests/gpu_check.sh

clean:
	rm -rf build deepseek

# ---- tokenizer: `make bench-tokenizer` (a part of `make bench`) and `make fuzz` (libFuzzer, clang, ASan + UBSan)
.PHONY: bench-tokenizer fuzz
bench: bench-tokenizer
bench-tokenizer: deepseek $(VENV)/.done
	@bash tests/bench/bench_tokenizer.sh
FUZZ_SECONDS ?= 60
FUZZ_CXX     ?= clang++
# libFuzzer harnesses (tests/fuzz/fuzz_*.cpp), one per parser. The four sources are compiled once into build/fuzz/obj
# with clang and the sanitizers (fuzzer-no-link: coverage instrumentation, libFuzzer's main comes at the link), with
# DEEPSEEK_TEST (no main()), without OpenMP (the parsers are serial; no libomp needed) and without MPI. Undefined
# behaviour stops the run (-fno-sanitize-recover), as a sanitizer report does, also when a finding is replayed by hand.
FUZZ_BASE    := -std=c++17 -O1 -g -fno-omit-frame-pointer -Wno-unknown-pragmas -DDEEPSEEK_TEST -fno-sanitize-recover=undefined
FUZZ_FLAGS   := $(FUZZ_BASE) -fsanitize=fuzzer,address,undefined
FUZZ_OBJS    := $(addprefix build/fuzz/obj/,deepseek.o train.o infer.o tokenizer.o sweep.o)
FUZZ_BINS    := $(patsubst tests/fuzz/%.cpp,build/fuzz/%,$(wildcard tests/fuzz/fuzz_*.cpp))
build/fuzz/obj/%.o: %.cu $(HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(FUZZ_BASE) -fsanitize=fuzzer-no-link,address,undefined -x c++ -c $< -o $@
build/fuzz/obj/%.o: %.cpp $(HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(FUZZ_BASE) -fsanitize=fuzzer-no-link,address,undefined -c $< -o $@
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.cpp tests/fuzz/fuzz_util.h $(FUZZ_OBJS)
	$(FUZZ_CXX) $(FUZZ_FLAGS) $< $(FUZZ_OBJS) -o $@ -lonig
# these two #include tokenizer.cpp (for the static tokenizer_parse, tokenizer_from_gguf): every object but tokenizer.o
build/fuzz/fuzz_tokenizer_json build/fuzz/fuzz_gguf: build/fuzz/%: tests/fuzz/%.cpp tests/fuzz/fuzz_util.h tokenizer.cpp $(FUZZ_OBJS)
	$(FUZZ_CXX) $(FUZZ_FLAGS) $< $(filter-out %/tokenizer.o,$(FUZZ_OBJS)) -o $@ -lonig
fuzz-build: $(FUZZ_BINS)
# clang and its libFuzzer runtime are installed when missing (tests/fuzz/install_deps.sh), as `make test` does for g++
fuzz:
	@bash tests/fuzz/install_deps.sh
	@$(MAKE) --no-print-directory fuzz-build
	@bash tests/fuzz/run_fuzz.sh $(FUZZ_SECONDS)
.PHONY: fuzz-build

# ---- pre-training: `make demo` (the README's main command) and `make bench-train` (a part of `make bench`)
.PHONY: bench-train
demo: deps deepseek
	@bash tests/demo.sh
sweep: deps deepseek
	@bash tests/sweep.sh
bench: bench-train
bench-train: deepseek $(VENV)/.done
	OMP_NUM_THREADS=$(or $(BENCH_THREADS),2) $(VENV)/bin/python tests/bench/bench_train.py --threads $(or $(BENCH_THREADS),2)

# ---- generation: `make bench-infer` (a part of `make bench`): ./deepseek beside llama.cpp and transformers
.PHONY: bench-infer
bench: bench-infer
# build/bench/bench_mem (tests/bench/bench_mem.cpp): the memory read bandwidth each decode figure is printed beside
build/bench/bench_mem: tests/bench/bench_mem.cpp
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $< -o $@
bench-infer: deepseek build/bench/bench_mem $(VENV)/.done
	@$(VENV)/bin/python -c "import llama_cpp" 2>/dev/null || nice -n 19 $(VENV)/bin/pip install -q llama-cpp-python==0.3.36
	@$(VENV)/bin/python -c "import gguf" 2>/dev/null || $(VENV)/bin/pip install -q gguf==0.19.0
	$(VENV)/bin/python tests/bench/bench_infer.py $(BENCH_INFER_ARGS)

# ---- GGUF export: `make check-gguf` (a part of `make bench`): `deepseek convert --to gguf` read back by the gguf
# package, tokenized and decoded greedily by llama.cpp beside ./deepseek (tests/reference/check_gguf.py)
.PHONY: check-gguf
bench: check-gguf
check-gguf: deepseek $(VENV)/.done
	@$(VENV)/bin/python -c "import llama_cpp" 2>/dev/null || nice -n 19 $(VENV)/bin/pip install -q llama-cpp-python==0.3.36
	@$(VENV)/bin/python -c "import gguf" 2>/dev/null || $(VENV)/bin/pip install -q gguf==0.19.0
	$(VENV)/bin/python tests/reference/check_gguf.py --threads $(or $(BENCH_THREADS),2)
