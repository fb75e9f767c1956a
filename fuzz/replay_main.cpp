// The fuzz harnesses without libFuzzer: feeds LLVMFuzzerTestOneInput every file of the
// folders given (regression inputs of crashes found, seed corpora), so that the normal build's
// tests replay them. A missing folder is skipped (a harness without regressions has none);
// exits non-zero when no input at all was found.
#include <dirent.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  int fed = 0;
  for (int i = 1; i < argc; ++i) {
    DIR* dir = opendir(argv[i]);
    if (dir == nullptr) continue;
    std::vector<std::string> paths;
    while (const dirent* entry = readdir(dir)) {
      const std::string path = std::string(argv[i]) + "/" + entry->d_name;
      struct stat info {};
      if (::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode)) paths.push_back(path);
    }
    closedir(dir);
    for (const std::string& path : paths) {
      std::ifstream in(path, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++fed;
    }
  }
  std::printf("%d inputs replayed without a crash\n", fed);
  if (fed == 0) std::fprintf(stderr, "no inputs found\n");
  return fed > 0 ? 0 : 1;
}
