#include "data/prepare.h"


#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/atomic_file.h"
#include "io/paths.h"

namespace ttt::data {
namespace {

bool blank(const std::string& text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; });
}

struct Encoded {
  std::vector<text::TokenId> ids;
  uint64_t bytes = 0;
  bool empty = false, invalid_utf8 = false;
};

}  // namespace

std::vector<std::string> assign_splits(const std::vector<Document>& documents, double val_fraction,
                                       double test_fraction) {
  require(val_fraction >= 0 && test_fraction >= 0 && val_fraction + test_fraction < 1,
          "split fractions must be >= 0 and leave some documents for training");
  const size_t n = documents.size();
  const auto count = [&](double fraction) -> size_t {
    if (fraction <= 0) return 0;
    return std::max<size_t>(size_t(std::llround(fraction * double(n))), n >= 3 ? 1 : 0);
  };
  const size_t n_val = count(val_fraction), n_test = count(test_fraction);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::vector<double> keys(n);
  for (size_t i = 0; i < n; ++i) keys[i] = stable_fraction(documents[i].name);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return keys[a] != keys[b] ? keys[a] < keys[b] : documents[a].name < documents[b].name;
  });
  std::vector<std::string> splits(n, "train");
  for (size_t k = 0; k < n && k < n_val + n_test; ++k) splits[order[k]] = k < n_val ? "val" : "test";
  return splits;
}

std::string per_document_file_name(const std::string& document_name) {
  std::string name = document_name;
  if (name.size() > 4 && name.compare(name.size() - 4, 4, ".txt") == 0) name.resize(name.size() - 4);
  std::string out;
  for (char c : name) {
    if (c == '/') out += "__";
    else out += c;
  }
  return out + ".u32";
}

std::string PrepareSummary::to_json() const {
  nlohmann::json j;
  j["tokenizer"] = tokenizer;
  j["vocab_size"] = vocab_size;
  j["bos_id"] = bos_id;
  j["documents"] = documents;
  j["empty_documents_skipped"] = empty_documents;
  j["invalid_utf8_documents"] = invalid_utf8_documents;
  j["bytes"] = bytes;
  j["tokens"] = tokens;
  j["bytes_per_token"] = tokens ? double(bytes) / double(tokens) : 0.0;
  nlohmann::json splits_json = nlohmann::json::array();
  for (const SplitSummary& s : splits) {
    splits_json.push_back({{"name", s.name},
                           {"file", s.file.substr(s.file.rfind('/') + 1)},  // beside prepare.json
                           {"documents", s.documents},
                           {"bytes", s.bytes},
                           {"tokens", s.tokens},
                           {"document_names", s.document_names}});
  }
  j["splits"] = splits_json;
  return j.dump(2) + "\n";
}

PrepareSummary prepare_documents(const std::vector<Document>& documents, const text::Tokenizer& tokenizer,
                                 const PrepareOptions& options, const PrepareProgressFn& progress) {
  require(!options.out_dir.empty(), "no output directory given");
  const auto start = std::chrono::steady_clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  io::make_directories(options.out_dir);

  PrepareSummary summary;
  summary.tokenizer = tokenizer.name();
  summary.vocab_size = tokenizer.vocab_size();
  summary.bos_id = tokenizer.bos_id();
  const text::TokenId bos = tokenizer.bos_id();

  // Where each document goes: an index into `splits` (and `files`).
  std::vector<size_t> target(documents.size());
  std::vector<std::unique_ptr<io::AtomicFile>> files;
  if (options.per_document) {
    std::map<std::string, std::string> seen;
    for (size_t i = 0; i < documents.size(); ++i) {
      const std::string file = per_document_file_name(documents[i].name);
      const auto [it, fresh] = seen.emplace(file, documents[i].name);
      require(fresh, "documents '" + it->second + "' and '" + documents[i].name + "' map to one token file '" +
                         file + "'");
      summary.splits.push_back({documents[i].name, "", 0, 0, 0, {}});
      target[i] = i;
    }
  } else {
    const std::vector<std::string> names = assign_splits(documents, options.val_fraction, options.test_fraction);
    for (const char* split : {"train", "val", "test"}) summary.splits.push_back({split, "", 0, 0, 0, {}});
    for (size_t i = 0; i < documents.size(); ++i) target[i] = names[i] == "train" ? 0 : names[i] == "val" ? 1 : 2;
  }
  files.resize(summary.splits.size());
  const auto file_name = [&](size_t split) {
    return options.per_document ? per_document_file_name(summary.splits[split].name)
                                : summary.splits[split].name + ".u32";
  };

  PrepareProgress state;
  state.documents_total = int64_t(documents.size());
  for (const Document& d : documents) state.bytes_total += d.size;

  const int threads = std::max(1, options.threads);
  constexpr uint64_t kBatchBytes = 4 << 20;
  size_t next = 0;
  while (next < documents.size()) {
    // A batch: enough documents to keep every thread busy, read in order.
    std::vector<std::string> texts;
    uint64_t batch_bytes = 0;
    const size_t first = next;
    while (next < documents.size() && (texts.size() < size_t(threads) || batch_bytes < kBatchBytes) &&
           texts.size() < 4096) {
      texts.push_back(read_document(documents[next]));
      batch_bytes += texts.back().size();
      ++next;
    }
    std::vector<Encoded> encoded(texts.size());
    const auto work = [&](size_t worker) {
      for (size_t k = worker; k < texts.size(); k += size_t(threads)) {
        Encoded& e = encoded[k];
        e.bytes = texts[k].size();
        e.empty = blank(texts[k]);
        if (e.empty) continue;
        e.invalid_utf8 = !text::is_valid_utf8(texts[k]);
        e.ids.reserve(texts[k].size() / 3 + 2);
        e.ids.push_back(bos);
        const std::vector<text::TokenId> ids = tokenizer.encode(texts[k]);
        e.ids.insert(e.ids.end(), ids.begin(), ids.end());
        std::string().swap(texts[k]);
      }
    };
    if (threads == 1 || texts.size() == 1) {
      work(0);
    } else {
      std::vector<std::thread> pool;
      std::exception_ptr failure;
      std::mutex failure_mutex;
      for (int w = 0; w < threads; ++w) {
        pool.emplace_back([&, w] {
          try {
            work(size_t(w));
          } catch (...) {
            std::lock_guard<std::mutex> lock(failure_mutex);
            if (!failure) failure = std::current_exception();
          }
        });
      }
      for (std::thread& t : pool) t.join();
      if (failure) std::rethrow_exception(failure);
    }
    // Written in document order, whatever the thread that encoded them.
    for (size_t k = 0; k < encoded.size(); ++k) {
      const Document& document = documents[first + k];
      const Encoded& e = encoded[k];
      ++summary.documents;
      summary.bytes += e.bytes;
      state.bytes_done += document.size;
      if (e.empty) {
        ++summary.empty_documents;
        continue;
      }
      if (e.invalid_utf8) ++summary.invalid_utf8_documents;
      const size_t split = target[first + k];
      SplitSummary& s = summary.splits[split];
      if (!files[split]) {
        s.file = options.out_dir + "/" + file_name(split);
        files[split] = std::make_unique<io::AtomicFile>(s.file, "token file '" + s.file + "': ");
      }
      files[split]->write(e.ids.data(), e.ids.size() * sizeof(text::TokenId));
      if (options.per_document) {
        files[split]->commit();
        files[split].reset();
      }
      ++s.documents;
      s.bytes += e.bytes;
      s.tokens += e.ids.size();
      s.document_names.push_back(document.name);
      summary.tokens += e.ids.size();
    }
    state.documents_done = int64_t(next);
    state.seconds = elapsed();
    if (progress) progress(state);
  }
  for (auto& file : files) {
    if (file) file->commit();
  }
  if (options.per_document) {
    // Per-document "splits" that were skipped (empty) are left out of the summary.
    std::erase_if(summary.splits, [](const SplitSummary& s) { return s.documents == 0; });
  }
  summary.seconds = elapsed();
  io::write_text_file(options.out_dir + "/prepare.json", summary.to_json());
  return summary;
}

}  // namespace ttt::data
