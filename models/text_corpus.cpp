#include "models/text_corpus.h"

#include <array>
#include <fstream>
#include <iterator>

#include "runtime/error.h"

namespace rf {

namespace {

bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }
bool is_alpha(char c) { return is_upper(c) || (c >= 'a' && c <= 'z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// `([1-3] )?[A-Z][A-Za-z ]* [0-9]+` over the whole of line (no newline in it).
bool is_header(const char* s, size_t n) {
  size_t i = 0;
  if (n >= 2 && s[0] >= '1' && s[0] <= '3' && s[1] == ' ') i = 2;
  if (i >= n || !is_upper(s[i])) return false;
  ++i;
  size_t end = n;  // the trailing number
  while (end > i && is_digit(s[end - 1])) --end;
  if (end == n || end == i || s[end - 1] != ' ') return false;
  // [A-Za-z ]* then the ' ' before the number: everything in [i, end - 1) is a letter or space.
  for (size_t k = i; k + 1 < end; ++k)
    if (!is_alpha(s[k]) && s[k] != ' ') return false;
  return true;
}

}  // namespace

std::vector<size_t> chapter_starts(const std::string& text) {
  std::vector<size_t> starts;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) break;
    if (eol == pos) {  // an empty line: a chapter starts here if a header follows
      const size_t h = eol + 1;
      const size_t h_end = text.find('\n', h);
      if (h_end != std::string::npos && is_header(text.data() + h, h_end - h)) starts.push_back(pos);
    }
    pos = eol + 1;
  }
  return starts;
}

TextCorpus split_corpus(const std::string& text, int64_t test_every) {
  RF_CHECK(test_every >= 2, "split_corpus: test_every must be >= 2, got ", test_every);
  const std::vector<size_t> starts = chapter_starts(text);
  RF_CHECK(!starts.empty() && starts[0] == 0, "the text does not start with a chapter (an empty line, then a "
                                              "header like 'Genesis 1')");
  TextCorpus c;
  std::array<int32_t, 256> id{};
  id.fill(-1);
  for (unsigned char b : text) id[b] = 0;
  for (int b = 0; b < 256; ++b)
    if (id[size_t(b)] == 0) {
      id[size_t(b)] = int32_t(c.vocab.size());
      c.vocab.push_back(uint8_t(b));
    }
  c.chapters = int64_t(starts.size());
  for (size_t k = 0; k < starts.size(); ++k) {
    const size_t end = k + 1 < starts.size() ? starts[k + 1] : text.size();
    const bool test = int64_t(k) % test_every == test_every - 1;
    c.test_chapters += test;
    std::vector<int32_t>& out = test ? c.test : c.train;
    for (size_t i = starts[k]; i < end; ++i) out.push_back(id[static_cast<unsigned char>(text[i])]);
  }
  return c;
}

TextCorpus load_text_corpus(const std::string& path, bool expect_kjv) {
  std::ifstream in(path, std::ios::binary);
  RF_CHECK(in.good(), "cannot read the text corpus ", path,
           " (stage it with scripts/stage_data.sh, or pass --data-dir)");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  RF_CHECK(!in.bad(), "error reading ", path);
  return text_corpus_from(text, path, expect_kjv);
}

TextCorpus text_corpus_from(const std::string& text, const std::string& what, bool expect_kjv) {
  if (expect_kjv)
    RF_CHECK(text.size() == 4298239, what, " has ", text.size(),
             " bytes, not the 4298239 of `bible gen1:1-rev22:21` (docs/GPT.md)");
  TextCorpus c = split_corpus(text);
  if (expect_kjv)
    RF_CHECK(c.chapters == 1189 && c.vocab.size() == 73, what, " has ", c.chapters, " chapters and ", c.vocab.size(),
             " distinct bytes, not the 1189 and 73 of docs/GPT.md");
  return c;
}

}  // namespace rf
