// A byte-level text corpus split into train and test text by chapter, as docs/GPT.md specifies
// for the King James Bible (`bible gen1:1-rev22:21`, staged as data/kjv/kjv.txt).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace rf {

struct TextCorpus {
  std::vector<uint8_t> vocab;        // the distinct bytes of the whole text, ascending
  std::vector<int32_t> train, test;  // token ids (a byte's rank in vocab)
  int64_t chapters = 0, test_chapters = 0;
};

// Chapter starts: an empty line followed by a header line `([1-3] )?[A-Z][A-Za-z ]* [0-9]+`.
// Returns their byte offsets (each the offset of the empty line).
std::vector<size_t> chapter_starts(const std::string& text);

// Splits text into chapters (the text must start with the first), sends chapter k to the test
// text when k % test_every == test_every - 1, and encodes both. Throws rf::Error when the text
// has no chapter structure.
TextCorpus split_corpus(const std::string& text, int64_t test_every = 20);

// Reads the file and splits it; with `expect_kjv`, fails with one line unless it is the corpus
// docs/GPT.md fixes (4,298,239 bytes, 1,189 chapters, 73 symbols).
TextCorpus load_text_corpus(const std::string& path, bool expect_kjv = true);
// The same for text already in memory; `what` names it in errors.
TextCorpus text_corpus_from(const std::string& text, const std::string& what, bool expect_kjv = true);

}  // namespace rf
