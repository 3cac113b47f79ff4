#include "encoders/tokenizers/fix_text.h"

#include <utf8proc.h>

#include <cstdlib>
#include <vector>

namespace meshdit {
namespace {

std::vector<int32_t> decode(const std::string& s) {
  std::vector<int32_t> cps;
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  for (size_t i = 0; i < s.size();) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n = utf8proc_iterate(p + i, utf8proc_ssize_t(s.size() - i), &cp);
    if (n <= 0) {
      cps.push_back(0xFFFD);
      ++i;
    } else {
      cps.push_back(cp);
      i += size_t(n);
    }
  }
  return cps;
}

void append(std::string& out, int32_t cp) {
  utf8proc_uint8_t buf[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(cp, buf);
  out.append(reinterpret_cast<const char*>(buf), size_t(n));
}

// ftfy's LIGATURES table: the Latin presentation forms and digraphs.
const char* ligature(int32_t cp) {
  switch (cp) {
    case 0x0132:
      return "IJ";
    case 0x0133:
      return "ij";
    case 0x0149:
      return "'n";  // U+02BC n, whose U+02BC uncurl_quotes then straightens
    case 0x01C4:
      return "D\xC5\xBD";  // D Ž
    case 0x01C5:
      return "D\xC5\xBE";  // D ž
    case 0x01C6:
      return "d\xC5\xBE";  // d ž
    case 0x01C7:
      return "LJ";
    case 0x01C8:
      return "Lj";
    case 0x01C9:
      return "lj";
    case 0x01CA:
      return "NJ";
    case 0x01CB:
      return "Nj";
    case 0x01CC:
      return "nj";
    case 0xFB00:
      return "ff";
    case 0xFB01:
      return "fi";
    case 0xFB02:
      return "fl";
    case 0xFB03:
      return "ffi";
    case 0xFB04:
      return "ffl";
    case 0xFB05:
      return "\xC5\xBFt";  // ſ t
    case 0xFB06:
      return "st";
    default:
      return nullptr;
  }
}

// fix_c1_controls: a C1 control character is a Windows-1252 byte decoded as Latin-1 (0x93 was a curly quote).
// The five bytes Windows-1252 leaves undefined stay as they are ("sloppy" windows-1252).
int32_t from_c1(int32_t cp) {
  static const int32_t kCp1252[32] = {0x20AC, 0x81,   0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
                                      0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D,   0x017D, 0x8F,
                                      0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
                                      0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,   0x017E, 0x0178};
  return cp >= 0x80 && cp <= 0x9F ? kCp1252[cp - 0x80] : cp;
}

// fix_character_width: U+FF01-FFEF to their NFKC forms (full-width ASCII and symbols to ASCII and Latin-1,
// half-width katakana and Hangul to their usual widths), U+3000 to a space.
bool width_fixed(int32_t cp, std::string& out) {
  if (cp == 0x3000) {
    out += ' ';
    return true;
  }
  if (cp < 0xFF01 || cp > 0xFFEF) return false;
  utf8proc_uint8_t buf[5] = {};
  utf8proc_encode_char(cp, buf);
  utf8proc_uint8_t* nfkc = utf8proc_NFKC(buf);
  if (!nfkc) return false;
  out += reinterpret_cast<const char*>(nfkc);
  std::free(nfkc);
  return true;
}

bool removed_control(int32_t cp) {
  return (cp <= 0x08) || cp == 0x0B || (cp >= 0x0E && cp <= 0x1F) || cp == 0x7F || (cp >= 0x206A && cp <= 0x206F) ||
         cp == 0xFEFF || (cp >= 0xFFF9 && cp <= 0xFFFC) || (cp >= 0x1D173 && cp <= 0x1D17A) ||
         (cp >= 0xE0000 && cp <= 0xE007F);
}

}  // namespace

// One pass of html.unescape for numeric references and the named ones prompts meet in practice (the
// full HTML5 table is some two thousand names; an unknown name is left as written, as Python leaves it).
std::string html_unescape(const std::string& s) {
  static const std::pair<const char*, uint32_t> kNamed[] = {
      {"amp", '&'},      {"lt", '<'},       {"gt", '>'},        {"quot", '"'},     {"apos", '\''},    {"nbsp", 0xA0},
      {"ndash", 0x2013}, {"mdash", 0x2014}, {"hellip", 0x2026}, {"lsquo", 0x2018}, {"rsquo", 0x2019}, {"ldquo", 0x201C},
      {"rdquo", 0x201D}, {"copy", 0xA9},    {"reg", 0xAE},      {"deg", 0xB0},     {"times", 0xD7},   {"eacute", 0xE9}};
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s[i] != '&') {
      out += s[i++];
      continue;
    }
    const size_t semi = s.find(';', i);
    if (semi == std::string::npos || semi - i > 12) {
      out += s[i++];
      continue;
    }
    const std::string body = s.substr(i + 1, semi - i - 1);
    bool done = false;
    if (body.size() > 1 && body[0] == '#') {
      const bool hex = body[1] == 'x' || body[1] == 'X';
      const std::string digits = body.substr(hex ? 2 : 1);
      if (!digits.empty() &&
          digits.find_first_not_of(hex ? "0123456789abcdefABCDEF" : "0123456789") == std::string::npos) {
        const unsigned long cp = std::stoul(digits, nullptr, hex ? 16 : 10);
        append(out, cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) ? 0xFFFD : int32_t(cp));
        done = true;
      }
    } else {
      for (const auto& [name, cp] : kNamed)
        if (body == name) {
          append(out, int32_t(cp));
          done = true;
          break;
        }
    }
    if (done) {
      i = semi + 1;
    } else {
      out += s[i++];
    }
  }
  return out;
}

std::string fix_text(const std::string& text) {
  // ftfy's unescape_html="auto": entities are unescaped unless the text looks like HTML itself.
  const std::vector<int32_t> in = decode(text.find('<') == std::string::npos ? html_unescape(text) : text);
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < in.size(); ++i) {
    int32_t cp = from_c1(in[i]);
    if (const char* lig = ligature(cp)) {
      out += lig;
      continue;
    }
    if (std::string w; width_fixed(cp, w)) {
      // The width forms are ASCII, Latin-1 symbols, kana and jamo: nothing the later steps change.
      out += w;
      continue;
    }
    if ((cp >= 0x2018 && cp <= 0x201B) || cp == 0x02BC) cp = '\'';
    if (cp >= 0x201C && cp <= 0x201F) cp = '"';
    if (cp == '\r') {
      if (i + 1 < in.size() && in[i + 1] == '\n') ++i;
      cp = '\n';
    }
    if (cp == 0x2028 || cp == 0x2029 || cp == 0x85) cp = '\n';
    if (removed_control(cp)) continue;
    append(out, cp);
  }
  utf8proc_uint8_t* nfc = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(out.c_str()));
  if (!nfc) return out;
  std::string r(reinterpret_cast<const char*>(nfc));
  std::free(nfc);
  return r;
}

}  // namespace meshdit
