// Links lowrank::cuda from a C++ program: its link interface must resolve. The
// program itself stays small (the randomized SVD is main.cpp's job).
#include <lowrank/version.hpp>

#include <cstdio>

int main() {
  std::printf("lowrank %d.%d.%d\n", lowrank::version_major, lowrank::version_minor,
              lowrank::version_patch);
  return 0;
}
