// Data layer: Megatron indexed dataset format, corruption errors, domains sidecar, sampler, unigram.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include "data/domains.h"
#include "data/indexed_dataset.h"
#include "data/sampler.h"
#include "data/unigram.h"

using namespace moetrain::data;
namespace fs = std::filesystem;

namespace {

std::string temp_prefix(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / "moetrain_data_test";
  fs::create_directories(dir);
  return (dir / name).string();
}

std::vector<int64_t> all_tokens(const IndexedDataset& ds) {
  std::vector<int64_t> out(ds.num_tokens());
  ds.read_tokens(0, ds.num_tokens(), out.data());
  return out;
}

// Independent reference writer, byte for byte as Megatron-LM's _IndexWriter lays the index out,
// including documents made of several sequences.
template <typename T>
void megatron_reference_write(const std::string& prefix, uint8_t dtype_code,
                              const std::vector<std::vector<std::vector<T>>>& documents) {
  std::ofstream bin(prefix + ".bin", std::ios::binary), idx(prefix + ".idx", std::ios::binary);
  std::vector<int32_t> lengths;
  std::vector<int64_t> pointers, doc_indices{0};
  int64_t offset = 0;
  for (const auto& doc : documents) {
    for (const auto& seq : doc) {
      bin.write(reinterpret_cast<const char*>(seq.data()), seq.size() * sizeof(T));
      lengths.push_back(static_cast<int32_t>(seq.size()));
      pointers.push_back(offset);
      offset += seq.size() * sizeof(T);
    }
    doc_indices.push_back(static_cast<int64_t>(lengths.size()));
  }
  idx.write("MMIDIDX\x00\x00", 9);
  const uint64_t version = 1, seq_count = lengths.size(), doc_count = doc_indices.size();
  idx.write(reinterpret_cast<const char*>(&version), 8);
  idx.write(reinterpret_cast<const char*>(&dtype_code), 1);
  idx.write(reinterpret_cast<const char*>(&seq_count), 8);
  idx.write(reinterpret_cast<const char*>(&doc_count), 8);
  idx.write(reinterpret_cast<const char*>(lengths.data()), lengths.size() * 4);
  idx.write(reinterpret_cast<const char*>(pointers.data()), pointers.size() * 8);
  idx.write(reinterpret_cast<const char*>(doc_indices.data()), doc_indices.size() * 8);
}

std::string open_error(const std::string& prefix) {
  try {
    IndexedDataset::open(prefix);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "<no error>";
}

std::string write_small(const std::string& name) {
  const std::string prefix = temp_prefix(name);
  fs::remove(prefix + ".domains");
  IndexedDatasetWriter w(prefix, 100);
  w.add_document({1, 2, 3});
  w.add_document({4, 5});
  w.finish();
  return prefix;
}

void patch(const std::string& path, size_t offset, const std::vector<char>& bytes) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TEST(IndexedDataset, RoundTripUint16AndInt32) {
  for (int64_t vocab : {1000, 70000}) {
    const std::string prefix = temp_prefix("roundtrip" + std::to_string(vocab));
    IndexedDatasetWriter w(prefix, vocab);
    w.add_document({0, 5, 999});
    w.add_document({});
    w.add_document({7});
    w.finish();
    auto ds = IndexedDataset::open(prefix);
    EXPECT_EQ(ds.dtype(), vocab < 65500 ? TokenDtype::kUInt16 : TokenDtype::kInt32);
    EXPECT_EQ(fs::file_size(prefix + ".bin"), 4u * (vocab < 65500 ? 2 : 4));
    EXPECT_EQ(ds.num_documents(), 3);
    EXPECT_EQ(ds.num_tokens(), 4);
    EXPECT_EQ(all_tokens(ds), (std::vector<int64_t>{0, 5, 999, 7}));
    EXPECT_EQ(ds.document_range(1), (std::pair<int64_t, int64_t>{3, 0}));
    EXPECT_EQ(ds.document_range(2), (std::pair<int64_t, int64_t>{3, 1}));
    EXPECT_EQ(ds.max_token_id(), 999);
  }
}

TEST(IndexedDataset, WriterRejectsIdsOutsideTheVocabulary) {
  IndexedDatasetWriter w(temp_prefix("badid"), 10);
  try {
    w.add_document({3, 10});
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 10 outside the vocabulary [0, 10)"), std::string::npos)
        << e.what();
  }
}

TEST(IndexedDataset, ReadsMegatronReferenceFilesWithMultiSequenceDocuments) {
  const std::string prefix = temp_prefix("megatron_ref");
  megatron_reference_write<uint16_t>(prefix, 8, {{{10, 11}, {12}}, {{13, 14, 15}}, {{16}, {17}, {18}}});
  auto ds = IndexedDataset::open(prefix);
  EXPECT_EQ(ds.num_sequences(), 6);
  EXPECT_EQ(ds.num_documents(), 3);
  EXPECT_EQ(all_tokens(ds), (std::vector<int64_t>{10, 11, 12, 13, 14, 15, 16, 17, 18}));
  EXPECT_EQ(ds.document_range(0), (std::pair<int64_t, int64_t>{0, 3}));
  EXPECT_EQ(ds.document_range(2), (std::pair<int64_t, int64_t>{6, 3}));

  const std::string prefix32 = temp_prefix("megatron_ref32");
  megatron_reference_write<int32_t>(prefix32, 4, {{{100000, 2}}, {{3}}});
  EXPECT_EQ(all_tokens(IndexedDataset::open(prefix32)), (std::vector<int64_t>{100000, 2, 3}));
}

TEST(IndexedDataset, OurWriterMatchesTheReferenceBytes) {
  const std::string ours = temp_prefix("ours"), ref = temp_prefix("ref");
  IndexedDatasetWriter w(ours, 500);
  w.add_document({1, 2, 3});
  w.add_document({4});
  w.finish();
  megatron_reference_write<uint16_t>(ref, 8, {{{1, 2, 3}}, {{4}}});
  for (const char* ext : {".idx", ".bin"}) {
    std::ifstream a(ours + ext, std::ios::binary), b(ref + ext, std::ios::binary);
    std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
    EXPECT_EQ(sa, sb) << ext;
  }
}

TEST(IndexedDataset, CorruptFilesGiveExactErrors) {
  const std::string fix = "; re-create it with moe-data encode (or Megatron's preprocess_data.py)";
  std::string p = write_small("bad_magic");
  patch(p + ".idx", 0, {'X', 'X', 'X', 'X'});
  EXPECT_EQ(open_error(p), p + ".idx: bad magic 'XXXXIDX' (expected Megatron indexed dataset 'MMIDIDX')" + fix);

  p = write_small("bad_version");
  patch(p + ".idx", 9, {2});
  EXPECT_EQ(open_error(p), p + ".idx: unsupported version 2 (expected 1)" + fix);

  p = write_small("bad_dtype");
  patch(p + ".idx", 17, {9});
  EXPECT_EQ(open_error(p), p + ".idx: unknown dtype code 9 (expected 1..8)" + fix);

  p = write_small("short_header");
  fs::resize_file(p + ".idx", 20);
  EXPECT_EQ(open_error(p), p + ".idx: truncated header (20 bytes, need 34)" + fix);

  p = write_small("short_index");
  fs::resize_file(p + ".idx", 50);
  EXPECT_EQ(open_error(p),
            p + ".idx: truncated index: 2 sequences and 3 document entries need 82 bytes, file has 50" + fix);

  p = write_small("short_bin");
  fs::resize_file(p + ".bin", 6);
  EXPECT_EQ(open_error(p), p + ".bin: truncated: the index needs 10 bytes, file has 6" + fix);

  p = write_small("odd_bin");
  fs::resize_file(p + ".bin", 9);
  EXPECT_EQ(open_error(p), p + ".bin: size 9 is not a multiple of the token size 2" + fix);

  p = write_small("bad_pointer");
  const int64_t far = 1000;
  std::vector<char> bytes(8);
  std::memcpy(bytes.data(), &far, 8);
  patch(p + ".idx", 34 + 2 * 4 + 8, bytes);  // second sequence pointer
  EXPECT_EQ(open_error(p), p + ".idx: sequence 1 has pointer 1000 and length 2 (expected pointer 6)" + fix);

  EXPECT_EQ(open_error(temp_prefix("missing")),
            temp_prefix("missing") +
                ".idx: cannot open; check data prefixes point at PREFIX of PREFIX.idx/PREFIX.bin");
}

TEST(Domains, RoundTripDefaultAndMismatch) {
  const std::string p = write_small("domains");
  auto ds = IndexedDataset::open(p);
  EXPECT_EQ(read_domains(p, ds), (std::vector<std::string>{"all", "all"})) << "no sidecar: one domain";
  write_domains(p, {"en", "code"});
  EXPECT_EQ(read_domains(p, ds), (std::vector<std::string>{"en", "code"}));
  write_domains(p, {"en"});
  try {
    read_domains(p, ds);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()),
              p + ".domains: names 1 documents but the dataset has 2; it belongs to another "
                  "dataset: re-create it with moe-data encode");
  }
}

TEST(Sampler, DeterministicResumableAndEachEpochVisitsEveryChunkOnce) {
  const std::string p = temp_prefix("sampler");
  IndexedDatasetWriter w(p, 1000);
  std::vector<int32_t> doc(401);
  for (int i = 0; i < 401; ++i) doc[i] = i;
  w.add_document(doc);
  w.finish();
  auto ds = IndexedDataset::open(p);
  SequenceSampler a(ds, 8, 42), b(ds, 8, 42), other(ds, 8, 43);
  ASSERT_EQ(a.chunks_per_epoch(), 50);
  std::vector<int64_t> x(9), y(9);
  std::set<int64_t> seen;
  bool differs = false;
  for (int64_t pos = 0; pos < 50; ++pos) {
    a.sample(pos, x.data());
    EXPECT_EQ(x[0] % 8, 0) << "chunks start at multiples of seq_len";
    for (int i = 1; i < 9; ++i) EXPECT_EQ(x[i], x[0] + i) << "contiguous inputs + shifted target";
    seen.insert(x[0] / 8);
    differs |= a.chunk_at(pos) != other.chunk_at(pos);
  }
  EXPECT_EQ(seen.size(), 50u) << "one epoch visits every chunk exactly once";
  EXPECT_TRUE(differs) << "another seed gives another order";
  // Resume: a fresh sampler asked for position 73 (second epoch) gives what a continuous one gives.
  for (int64_t pos = 0; pos < 80; ++pos) a.sample(pos, x.data());
  b.sample(73, y.data());
  a.sample(73, x.data());
  EXPECT_EQ(x, y);
  EXPECT_NE(a.chunk_at(3), a.chunk_at(53)) << "epochs are shuffled differently";
}

// Pins the documented shuffle (splitmix64, Fisher–Yates, rejection draw): values computed by an
// independent Python transcription of the algorithm. A change here breaks resuming older runs.
TEST(Sampler, ShuffleMatchesTheDocumentedAlgorithm) {
  const std::string p = temp_prefix("sampler_golden");
  IndexedDatasetWriter w(p, 1000);
  std::vector<int32_t> doc(81);
  for (int i = 0; i < 81; ++i) doc[i] = i;
  w.add_document(doc);
  w.finish();
  auto ds = IndexedDataset::open(p);
  SequenceSampler s(ds, 8, 42);
  ASSERT_EQ(s.chunks_per_epoch(), 10);
  std::vector<int64_t> order;
  for (int64_t pos = 0; pos < 20; ++pos) order.push_back(s.chunk_at(pos));
  EXPECT_EQ(order, (std::vector<int64_t>{6, 1, 8, 5, 2, 7, 4, 3, 9, 0, 9, 0, 5, 3, 7, 2, 8, 1, 6, 4}));
}

TEST(Sampler, TooShortDatasetIsAClearError) {
  const std::string p = write_small("short_sampler");
  auto ds = IndexedDataset::open(p);
  try {
    SequenceSampler s(ds, 8, 1);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()),
              p + ": 5 tokens, fewer than one sequence of data.seq_len + 1 = 9; use more data "
                  "or a smaller data.seq_len");
  }
  try {
    SequenceSampler s(ds, 0, 1);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "data.seq_len is 0; it must be at least 1");
  }
}

TEST(EvalSequences, WindowsPerDomainInDocumentOrder) {
  const std::string p = temp_prefix("eval_windows");
  IndexedDatasetWriter w(p, 100);
  w.add_document({1, 2, 3, 4});
  w.add_document({50, 51, 52});
  w.add_document({5, 6, 7, 8, 9});
  w.finish();
  write_domains(p, {"a", "b", "a"});
  auto ds = IndexedDataset::open(p);
  auto ev = eval_sequences(ds, read_domains(p, ds), 3, 10);
  ASSERT_EQ(ev.domains, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(ev.counts, (std::vector<int64_t>{2, 0}));  // stream a = 1..9 (9 tokens): windows [1..4], [4..7]
  EXPECT_EQ(ev.tokens[0], (std::vector<int64_t>{1, 2, 3, 4, 4, 5, 6, 7}));
  auto capped = eval_sequences(ds, read_domains(p, ds), 3, 1);
  EXPECT_EQ(capped.counts[0], 1);
}

TEST(Unigram, MatchesHandComputedPerplexity) {
  const std::string train = temp_prefix("uni_train"), valid = temp_prefix("uni_valid");
  {
    IndexedDatasetWriter w(train, 4);
    w.add_document({0, 0, 1});  // counts 2, 1, 0, 0 over N = 3
    w.finish();
    IndexedDatasetWriter v(valid, 4);
    v.add_document({0, 2});
    v.finish();
  }
  // p(0) = 3/7, p(2) = 1/7: ppl = exp(-(ln 3/7 + ln 1/7) / 2) = sqrt(49/3).
  const double ppl = unigram_perplexity(IndexedDataset::open(train), IndexedDataset::open(valid), 4);
  EXPECT_NEAR(ppl, std::sqrt(49.0 / 3.0), 1e-9);
}

TEST(Unigram, RejectsIdsOutsideTheVocabularyAndEmptyValidation) {
  const std::string train = temp_prefix("uni_train_bad"), empty = temp_prefix("uni_empty");
  {
    IndexedDatasetWriter w(train, 10);
    w.add_document({0, 7});
    w.finish();
    IndexedDatasetWriter v(empty, 10);
    v.finish();
  }
  auto tr = IndexedDataset::open(train);
  auto ev = IndexedDataset::open(empty);
  try {
    unigram_perplexity(tr, tr, 5);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()),
              train + ": token id 7 outside vocabulary size 5; pass the tokenizer's vocabulary size");
  }
  try {
    unigram_perplexity(tr, ev, 10);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()),
              empty + ": no tokens to evaluate the unigram baseline on; encode a non-empty validation split");
  }
}
