"""cpu/line_prefetch.h (the next work unit's lines, spread over this unit's blocks: tiny attention, multi-axis
attention) on a program compiled here with g++ whose __builtin_prefetch records its arguments: every line of every
stream, one- and three-level, in order, with its read / write flag, each once; nothing during a task's first unit
(which counts the calls), then `per` lines a call; empty streams add nothing. A wrong line is no error at run time
(prefetches never fault): only the time would show it."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"

PROGRAM = r"""
#include <cstdint>
#include <cstdio>
#include <vector>
struct Line { const char* p; int write, locality; };
static std::vector<Line> issued;
#define __builtin_prefetch(p, w, l) issued.push_back({(const char*)(p), (w), (l)})
#define FASTAR_ISA check
#include "cpu/line_prefetch.h"
using fastar::cpu::check::LinePrefetch;

static float buf[1 << 20];
static std::vector<Line> want;
static int failures = 0;

// The lines of rows x c1 x c2 rows of len floats, row (j, j1, j2) at p + j rs + j1 s1 + j2 s2, in that order.
static void expect(const float* p, long rs, int rows, int len, bool write, long s1 = 0, int c1 = 1, long s2 = 0,
                   int c2 = 1) {
  const int lines = (len * 4 + 63) / 64;
  for (int j2 = 0; j2 < c2; ++j2)
    for (int j1 = 0; j1 < c1; ++j1)
      for (int j = 0; j < rows; ++j)
        for (int c = 0; c < lines; ++c)
          want.push_back({reinterpret_cast<const char*>(p + j * rs + j1 * s1 + j2 * s2) + 64 * c, write, 2});
}

static void check(const char* what) {
  bool same = issued.size() == want.size();
  for (size_t i = 0; same && i < want.size(); ++i)
    same = issued[i].p == want[i].p && issued[i].write == want[i].write && issued[i].locality == want[i].locality;
  if (!same) std::printf("%s: %zu lines issued, %zu wanted, or not the same\n", what, issued.size(), want.size());
  failures += !same;
  issued.clear(), want.clear();
}

int main() {
  LinePrefetch<2> pf;
  // Unit 1: a multi-axis-like query operand (2 heads x 8 columns x 8 rows of 32 floats), a key-shaped written one,
  // an empty stream. Its calls prefetch nothing (per is 0 until a unit has counted them); next() issues it all.
  pf.add(buf + 3, 32, 2, 32, false, 8, 512, 8, 32768);
  expect(buf + 3, 32, 2, 32, false, 512, 8, 32768, 8);
  pf.add(buf + 500000, 64, 5, 40, true, 3, 4096);
  expect(buf + 500000, 64, 5, 40, true, 4096, 3);
  pf.add(buf, 8, 0, 8, false);
  for (int k = 0; k < 10; ++k) pf();
  if (!issued.empty()) std::printf("the first unit's calls issued %zu lines\n", issued.size()), ++failures;
  pf.next();
  check("unit 1");
  const int lines1 = 2 * 8 * 8 * 2 + 5 * 3 * 3;
  if (pf.per != (lines1 + 9) / 10) std::printf("per %d, want %d\n", pf.per, (lines1 + 9) / 10), ++failures;
  // Unit 2: per lines a call, then the rest at next().
  pf.add(buf + 7, 16, 3, 20, false, 4, 1000);
  expect(buf + 7, 16, 3, 20, false, 1000, 4);
  pf();
  if (int(issued.size()) != (pf.per < 24 ? pf.per : 24))
    std::printf("one call issued %zu lines\n", issued.size()), ++failures;
  pf(), pf();
  pf.next();
  check("unit 2");
  std::printf(failures ? "FAILED\n" : "OK\n");
  return failures != 0;
}
"""


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("g++") is None, reason="needs Linux and g++")
def test_line_prefetch_issues_every_line_of_its_streams(tmp_path):
    src, exe = tmp_path / "line_prefetch.cpp", tmp_path / "line_prefetch"
    src.write_text(PROGRAM)
    subprocess.run(["g++", "-std=c++17", "-O1", f"-I{CSRC}", str(src), "-o", str(exe)], check=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout
