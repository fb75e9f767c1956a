// Inputs shared by the tokenizer tests: texts that exercise every part of a tokenizer.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace ttt::test {

// Hand-picked texts: ASCII prose, whitespace runs, digits, contractions, non-Latin scripts,
// emoji, code, and long runs (for the merge loop of long pieces). All valid UTF-8.
inline std::vector<std::string> sample_texts() {
  std::vector<std::string> texts = {
      "Hello world",
      "Hello  world!  ",
      "   leading spaces and trailing spaces   ",
      "tabs\tand\nnewlines\r\n\r\nCRLF line\rCR only",
      "   \n\n\n   \t\t  \n",
      " ",
      "\n",
      "a",
      "digits: 1234567890 12 345 6789 3.14159 1e10 0x1F2E 2026-11-23 100,000,000 007",
      "I'm you're they've we'll she'd it's DON'T I'M We'Re o'clock 'tis",
      "héllo wörld naïve café Ångström",
      "日本語のテキスト、中文文本。한국어 텍스트",
      "Привет, мир! Ελληνικά हिन्दी مرحبا بالعالم",
      "emoji 😀🎉 family 👨‍👩‍👧 flag 🇫🇷 thumbs 👍🏽",
      "combining e\xCC\x81 and ﬁ ligature, non\xC2\xA0" "breaking space, em\xE2\x80\x83space",
      "def f(x):\n    return x**2  # comment\n\n\nclass A:\n\tpass\n",
      "int main(void) { return 0; } // x += y >> 2;",
      "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
      "mixed123abc ABC123 $100.00 50% #hashtag @user user@example.com",
      "!!!??? ... --- === *** ___ ~~~ ``` '''",
      std::string(3000, ' ') + "x",
      std::string(2000, 'a'),
      std::string(100, 'z') + " " + std::string(70, 'q'),
      [] {
        std::string s;
        for (int i = 0; i < 500; ++i) s += "=-";
        return s;
      }(),
      [] {
        std::string s;
        for (int i = 0; i < 1000; ++i) s += char('0' + (i * 7) % 10);
        return s;
      }(),
      std::string(200, '\n') + "end",
  };
  return texts;
}

// Texts that mention special tokens.
inline std::vector<std::string> special_texts() {
  return {
      "<|endoftext|>",
      "a<|endoftext|>b",
      "Hello<|endoftext|> world<|endoftext|><|endoftext|>",
      "<|begin_of_text|>Hi there<|end_of_text|>",
      "<|fim_prefix|>x = <|fim_suffix|>\n<|fim_middle|>",
      "prompt<|endofprompt|>",
      "<|im_start|>user\nhi<|im_end|>",
      "<|start_header_id|>system<|end_header_id|>\n\nYou are kind.<|eot_id|>",
      "<|reserved_special_token_5|> and <|endoftext (not closed) <|unknown|>",
  };
}

// Seeded random texts from fragments of many kinds, so the regex and merges meet combinations
// nobody thought of.
inline std::vector<std::string> random_texts(int count, uint64_t seed) {
  static const std::vector<std::string> fragments = {
      "the", " the", "The", " quick", "brown", "fox", "'s", "'t", "'re", "'ll", "'d", "'ve", "'m", "'",
      " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "0", "12", "345", "6789", "3.14", ",", ".", "!", "?",
      "-", "--", "(", ")", "{", "}", "[", "]", "<", ">", "/", "\\", "\"", ":", ";", "=", "+", "*", "#", "@",
      "é", "ü", "ß", "Ω", "ж", "日本", "中文", "한", "😀", "🇫🇷", "👍🏽", "ﬁ", "e\xCC\x81", "\xC2\xA0",
      "x", "Y", "zz", "ABC", "camelCase", "snake_case", "ALLCAPS", "don't", "O'Neil", "naïve",
  };
  std::mt19937_64 rng(seed);
  std::vector<std::string> texts;
  for (int i = 0; i < count; ++i) {
    const int n = 1 + int(rng() % 120);
    std::string text;
    for (int k = 0; k < n; ++k) text += fragments[rng() % fragments.size()];
    texts.push_back(text);
  }
  return texts;
}

// Random bytes, most of them not valid UTF-8.
inline std::vector<std::string> random_byte_strings(int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> texts;
  for (int i = 0; i < count; ++i) {
    std::string text(rng() % 300, '\0');
    for (char& c : text) c = char(rng() % 256);
    texts.push_back(text);
  }
  texts.push_back("\xff");
  texts.push_back("abc\x80\x80 def\xc3");          // stray continuation bytes, a truncated sequence
  texts.push_back("\xed\xa0\x80 surrogate");        // UTF-16 surrogate encoded in UTF-8: invalid
  texts.push_back("\xc0\xaf overlong slash");       // overlong form: invalid
  texts.push_back("\xf4\x90\x80\x80 above U+10FFFF");
  texts.push_back(std::string("nul\0byte", 8));
  return texts;
}

}  // namespace ttt::test
