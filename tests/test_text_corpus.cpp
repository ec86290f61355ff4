// The gpt corpus (docs/GPT.md): chapter detection, the every-20th-chapter split, the vocabulary,
// on a small text made here and, where it is staged (scripts/stage_data.sh), on the real file.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "models/text_corpus.h"
#include "runtime/error.h"

namespace {

std::string chapter(const std::string& header, const std::string& body) { return "\n" + header + "\n\n" + body; }

TEST(TextCorpus, ChaptersStartAtAnEmptyLineBeforeAHeader) {
  const std::string text = chapter("Genesis 1", "  1 In the beginning.\n\n  2 Not a header 2 here\n") +
                           chapter("1 Kings 3", "  1 Solomon.\nKings 4 is wrapped text, not after an empty line\n") +
                           chapter("Song of Solomon 12", "  1 The song.\n");
  const auto starts = rf::chapter_starts(text);
  ASSERT_EQ(starts.size(), 3u);
  EXPECT_EQ(starts[0], 0u);
  EXPECT_EQ(text.substr(starts[1], 11), "\n1 Kings 3\n");
  EXPECT_EQ(text.substr(starts[2], 20), "\nSong of Solomon 12\n");
}

TEST(TextCorpus, EveryNthChapterIsTestTextAndIdsAreByteRanks) {
  std::string text;
  for (int k = 0; k < 7; ++k) text += chapter("Book " + std::to_string(k + 1), std::string(size_t(k + 1), char('a' + k)) + "\n");
  const rf::TextCorpus c = rf::split_corpus(text, 3);  // chapters 2 and 5 are test text
  EXPECT_EQ(c.chapters, 7);
  EXPECT_EQ(c.test_chapters, 2);
  std::string test, train;
  for (int32_t id : c.test) test += char(c.vocab.at(size_t(id)));
  for (int32_t id : c.train) train += char(c.vocab.at(size_t(id)));
  EXPECT_EQ(test, chapter("Book 3", "ccc\n") + chapter("Book 6", "ffffff\n"));
  EXPECT_EQ(train.size() + test.size(), text.size());
  for (size_t i = 1; i < c.vocab.size(); ++i) EXPECT_LT(c.vocab[i - 1], c.vocab[i]);
  EXPECT_EQ(c.vocab.front(), '\n');
}

TEST(TextCorpus, TextWithoutChaptersIsAnError) {
  EXPECT_THROW(rf::split_corpus("no chapters here\n"), rf::Error);
  EXPECT_THROW(rf::split_corpus("  1 verse first\n" + chapter("Genesis 1", "x\n")), rf::Error);
  EXPECT_THROW(rf::load_text_corpus("/nonexistent/kjv.txt"), rf::Error);
}

// The King James text (staged, or printed by `bible` here): the counts docs/GPT.md states.
TEST(TextCorpus, KingJamesSplitAsSpecified) {
  std::string path = std::string(RF_SOURCE_DIR) + "/data/kjv/kjv.txt";
  if (!std::filesystem::exists(path)) {
    path = std::string(RF_BINARY_DIR) + "/kjv_test.txt";
    if (std::system(("bible gen1:1-rev22:21 > " + path + " 2>/dev/null").c_str()) != 0)
      GTEST_SKIP() << "neither data/kjv/kjv.txt nor the bible program (scripts/install_deps.sh installs bible-kjv)";
  }
  const rf::TextCorpus c = rf::load_text_corpus(path);
  EXPECT_EQ(c.chapters, 1189);
  EXPECT_EQ(c.test_chapters, 59);
  EXPECT_EQ(c.vocab.size(), 73u);
  EXPECT_EQ(c.train.size(), 4088107u);  // docs/GPT.md's counts (bench/gpt/kjv.py asserts the same)
  EXPECT_EQ(c.test.size(), 210132u);
}

}  // namespace
