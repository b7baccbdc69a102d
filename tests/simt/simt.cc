// simt runtime: fibers, barriers, warp collectives, launches. See simt.h.
#include "simt.h"

#include <sys/mman.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#if !defined(__x86_64__)
#error "simt: the fiber switch is written for x86-64"
#endif

// Under AddressSanitizer (the memcheck build, build.py) every stack switch is announced, so
// ASan tracks which stack is live, and a reused fiber stack is unpoisoned.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

// simt_switch(save, load): saves the callee-saved registers and the stack pointer of the
// running context to *save, then resumes the context whose stack pointer is load.
extern "C" void simt_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .hidden simt_switch
  .globl simt_switch
  .type simt_switch,@function
simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_switch, .-simt_switch
)");

namespace simt {

thread_local ThreadState* cur = nullptr;

namespace {

constexpr size_t kStack = 256 * 1024;
constexpr size_t kGuard = 4096;
constexpr size_t kStaticSmemLimit = 48 * 1024;

enum State { kRunnable, kWaitWarp, kWaitBlock, kDone };

struct Fiber {
  ThreadState ts{};
  void* sp = nullptr;
  char* mem = nullptr;  // kGuard bytes of PROT_NONE, then the stack
  State state = kRunnable;
  int kind = 0;
  int line = 0;
  int parity = 0;
};

struct Warp {
  uint64_t slot[2][32];
};

struct Engine {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  void* sched_sp = nullptr;
  Fiber* running = nullptr;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::vector<unsigned char> dyn;
  uint64_t block_gen = 0;
  std::map<void*, uint64_t> poisoned;
  bool failed = false;
  std::string message;
  const void* sched_bottom = nullptr;  // the scheduler's stack (ASan only)
  size_t sched_size = 0;
};

thread_local Engine E;
thread_local cudaError_t last_error = cudaSuccess;
std::mutex attr_mu;
std::map<const void*, int> attrs;  // kernel -> opted-in dynamic shared memory bytes
int optin_bytes = 227 * 1024;      // Hopper's cudaDevAttrMaxSharedMemoryPerBlockOptin
// The order in which each scheduling pass resumes a block's threads: 0 ascending, 1
// descending, 2 a fresh pseudo-random permutation per pass (seeded). A result that depends
// on it is a data race between threads (a missing barrier).
int schedule_mode = 0;
uint64_t schedule_seed = 1;

unsigned linear_tid(const ThreadState& t) {
  return (t.tid.z * t.bdim.y + t.tid.y) * t.bdim.x + t.tid.x;
}

// A fiber hands control back to the scheduler; exiting: it will not be resumed.
void to_scheduler(Fiber* f, bool exiting) {
#if SIMT_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, E.sched_bottom, E.sched_size);
  simt_switch(&f->sp, E.sched_sp);
  __sanitizer_finish_switch_fiber(fake, &E.sched_bottom, &E.sched_size);
#else
  (void)exiting;
  simt_switch(&f->sp, E.sched_sp);
#endif
}

void yield_to_scheduler() {
  to_scheduler(E.running, false);
}

}  // namespace
}  // namespace simt

extern "C" __attribute__((used)) void simt_fiber_entry() {
  using namespace simt;
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &E.sched_bottom, &E.sched_size);
#endif
  Fiber* f = E.running;
  E.body(E.ctx);
  f->state = kDone;
  to_scheduler(f, true);
  __builtin_trap();  // a finished fiber is never resumed
}

namespace simt {

void fail(const char* what) {
  if (!E.failed) {
    E.failed = true;
    char where[160] = "";
    if (cur != nullptr)
      std::snprintf(where, sizeof where, " (block %u,%u,%u thread %u,%u,%u)", cur->bid.x, cur->bid.y,
                    cur->bid.z, cur->tid.x, cur->tid.y, cur->tid.z);
    E.message = std::string(what) + where;
  }
  if (E.running != nullptr) {  // abandon this fiber; the scheduler stops the launch
    Fiber* f = E.running;
    f->state = kDone;
    to_scheduler(f, true);
    __builtin_trap();
  }
}

cudaError_t get_last_error() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

int smem_optin() { return optin_bytes; }

cudaError_t func_set_attribute(const void* fn, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > optin_bytes)
    return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> g(attr_mu);
  attrs[fn] = value;
  return cudaSuccess;
}

unsigned char* dynamic_smem() { return E.dyn.data(); }

void poison_shared(void* p, size_t bytes) {
  auto it = E.poisoned.find(p);
  if (it != E.poisoned.end() && it->second == E.block_gen) return;
  std::memset(p, 0xFF, bytes);
  E.poisoned[p] = E.block_gen;
}

void syncthreads(int line) {
  E.running->state = kWaitBlock;
  E.running->line = line;
  yield_to_scheduler();
}

uint64_t warp_exchange(uint64_t v, int kind, int line, uint64_t* out_all) {
  Fiber* f = E.running;
  const unsigned t = linear_tid(f->ts);
  Warp& w = E.warps[t / 32u];
  w.slot[f->parity][t % 32u] = v;
  f->state = kWaitWarp;
  f->kind = kind;
  f->line = line;
  yield_to_scheduler();
  std::memcpy(out_all, w.slot[f->parity], sizeof(uint64_t) * 32);
  f->parity ^= 1;
  return v;
}

namespace {

void ensure_fibers(size_t nthreads) {
  while (E.fibers.size() < nthreads) {
    Fiber f;
    void* m = mmap(nullptr, kGuard + kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      std::fprintf(stderr, "simt: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(m, kGuard, PROT_NONE);  // a stack overflow faults instead of corrupting memory
    f.mem = static_cast<char*>(m);
    E.fibers.push_back(f);
  }
}

void start_fiber(Fiber& f) {
#if SIMT_ASAN
  __asan_unpoison_memory_region(f.mem + kGuard, kStack);  // frames left by an abandoned fiber
#endif
  char* top = f.mem + kGuard + kStack;  // page aligned
  void** sp = reinterpret_cast<void**>(top - 64);
  for (int i = 0; i < 6; ++i) sp[i] = nullptr;  // r15 r14 r13 r12 rbx rbp
  sp[6] = reinterpret_cast<void*>(&simt_fiber_entry);  // "returned" to: rsp = top - 8, as after a call
  sp[7] = nullptr;
  f.sp = sp;
  f.state = kRunnable;
  f.parity = 0;
}

const char* state_name(State s) {
  switch (s) {
    case kRunnable: return "runnable";
    case kWaitWarp: return "at a warp collective";
    case kWaitBlock: return "at __syncthreads";
    default: return "exited";
  }
}

// Runs one block to completion; false (E.failed, E.message) on an error.
bool run_block(dim3 grid, dim3 block, uint3 bidx) {
  const unsigned nt = block.x * block.y * block.z;
  const unsigned nw = (nt + 31u) / 32u;
  E.warps.resize(nw);
  ++E.block_gen;
  if (!E.dyn.empty()) std::memset(E.dyn.data(), 0xFF, E.dyn.size());
  for (unsigned t = 0; t < nt; ++t) {
    Fiber& f = E.fibers[t];
    f.ts.bid = bidx;
    f.ts.bdim = {block.x, block.y, block.z};
    f.ts.gdim = {grid.x, grid.y, grid.z};
    f.ts.tid = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    start_fiber(f);
  }
  std::vector<unsigned> order(nt);
  for (unsigned t = 0; t < nt; ++t) order[t] = schedule_mode == 1 ? nt - 1 - t : t;
  uint64_t state = schedule_seed * 0x9E3779B97F4A7C15ull + E.block_gen;
  for (;;) {
    bool progressed = false;
    if (schedule_mode == 2)
      for (unsigned t = nt; t > 1; --t) {  // Fisher-Yates with a 64-bit LCG
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        std::swap(order[t - 1], order[(state >> 33) % t]);
      }
    for (unsigned o = 0; o < nt && !E.failed; ++o) {
      const unsigned t = order[o];
      Fiber& f = E.fibers[t];
      if (f.state != kRunnable) continue;
      E.running = &f;
      cur = &f.ts;
#if SIMT_ASAN
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, f.mem + kGuard, kStack);
      simt_switch(&E.sched_sp, f.sp);
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
      simt_switch(&E.sched_sp, f.sp);
#endif
      E.running = nullptr;
      progressed = true;
    }
    cur = nullptr;
    if (E.failed) return false;
    // warps whose live lanes all wait at a collective
    for (unsigned w = 0; w < nw; ++w) {
      const unsigned l0 = w * 32u, l1 = l0 + 32u < nt ? l0 + 32u : nt;
      unsigned waiting = 0, done = 0, runnable = 0;
      for (unsigned t = l0; t < l1; ++t) {
        const State s = E.fibers[t].state;
        waiting += s == kWaitWarp;
        done += s == kDone;
        runnable += s == kRunnable;
      }
      if (waiting == 0 || runnable != 0) continue;
      char msg[256];
      if (l1 - l0 != 32u || done != 0 || waiting != l1 - l0) {
        if (waiting + done == l1 - l0 || l1 - l0 != 32u) {
          std::snprintf(msg, sizeof msg,
                        "warp %u of block (%u,%u,%u): a full-mask warp collective with %u of 32 lanes present "
                        "(%u exited)", w, bidx.x, bidx.y, bidx.z, waiting, done);
          fail(msg);
          return false;
        }
        continue;  // some lanes wait at __syncthreads: resolved below or a deadlock
      }
      const Fiber& a = E.fibers[l0];
      for (unsigned t = l0 + 1; t < l1; ++t) {
        const Fiber& b = E.fibers[t];
        if (b.kind != a.kind || b.line != a.line) {
          std::snprintf(msg, sizeof msg,
                        "warp %u of block (%u,%u,%u): lane 0 is at the collective of line %d, lane %u at line %d "
                        "(divergent collective)", w, bidx.x, bidx.y, bidx.z, a.line, t - l0, b.line);
          fail(msg);
          return false;
        }
      }
      for (unsigned t = l0; t < l1; ++t) E.fibers[t].state = kRunnable;
      progressed = true;
    }
    unsigned live = 0, at_block = 0;
    for (unsigned t = 0; t < nt; ++t) {
      live += E.fibers[t].state != kDone;
      at_block += E.fibers[t].state == kWaitBlock;
    }
    if (live == 0) return true;
    if (at_block == live) {
      int first = -1;
      for (unsigned t = 0; t < nt; ++t) {
        const Fiber& f = E.fibers[t];
        if (f.state != kWaitBlock) continue;
        if (first < 0) {
          first = static_cast<int>(t);
        } else if (f.line != E.fibers[first].line) {
          char msg[256];
          std::snprintf(msg, sizeof msg,
                        "block (%u,%u,%u): thread %d waits at the __syncthreads of line %d, thread %u at line %d "
                        "(divergent barrier)", bidx.x, bidx.y, bidx.z, first, E.fibers[first].line, t, f.line);
          fail(msg);
          return false;
        }
      }
      for (unsigned t = 0; t < nt; ++t)
        if (E.fibers[t].state == kWaitBlock) E.fibers[t].state = kRunnable;
      continue;
    }
    if (!progressed) {
      for (unsigned t = 0; t < nt; ++t) {
        if (E.fibers[t].state == kDone) continue;
        char msg[256];
        std::snprintf(msg, sizeof msg,
                      "deadlock in block (%u,%u,%u): thread %u is %s while %u of %u live threads are at "
                      "__syncthreads (a barrier in divergent code?)",
                      bidx.x, bidx.y, bidx.z, t, state_name(E.fibers[t].state), at_block, live);
        fail(msg);
        return false;
      }
    }
  }
}

}  // namespace

void launch_impl(const void* fn, void (*body)(void*), void* ctx, dim3 grid, dim3 block, size_t smem) {
  if (E.running != nullptr) fail("kernel launch from device code (not emulated)");
  const uint64_t nt = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (nt == 0 || nt > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (smem > kStaticSmemLimit) {
    int allowed = 0;
    {
      std::lock_guard<std::mutex> g(attr_mu);
      auto it = attrs.find(fn);
      if (it != attrs.end()) allowed = it->second;
    }
    if (smem > static_cast<size_t>(allowed) || smem > static_cast<size_t>(optin_bytes)) {
      last_error = cudaErrorInvalidValue;  // > 48 KB without (enough) opt-in: refused, as on a GPU
      return;
    }
  }
  ensure_fibers(nt);
  E.dyn.assign(smem, 0xFF);
  E.body = body;
  E.ctx = ctx;
  E.failed = false;
  E.message.clear();
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x)
        if (!run_block(grid, block, {x, y, z})) {
          last_error = cudaErrorLaunchFailure;
          return;
        }
}

}  // namespace simt

extern "C" {
void simt_set_smem_optin(int bytes) { simt::optin_bytes = bytes; }
void simt_set_schedule(int mode, uint64_t seed) {
  simt::schedule_mode = mode;
  simt::schedule_seed = seed;
}
int simt_smem_optin() { return simt::optin_bytes; }
const char* simt_message() { return simt::E.message.c_str(); }
}
