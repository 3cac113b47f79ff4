// The deterministic part of ftfy.fix_text (ftfy 6, default settings), which diffusers' Wan pipeline runs on
// every prompt before tokenizing (prompt_clean = whitespace_clean(html.unescape(html.unescape(fix_text(t))))).
// Text pasted from a word processor carries curly quotes, ligatures and full-width forms that the
// tokenizer would otherwise see as other tokens than the reference's. In ftfy's order:
//   unescape_html         HTML entities, unless the text holds a '<' (one pass of html_unescape below)
//   fix_c1_controls       U+0080-009F read as the Windows-1252 bytes they were
//   fix_latin_ligatures   U+FB00-FB06 and the IJ / DZ / LJ / NJ digraphs to their letters
//   fix_character_width   U+FF01-FFEF to their NFKC forms (full-width ASCII to ASCII, half-width kana to
//                         kana), the ideographic space to a space
//   uncurl_quotes         U+2018-201B and U+02BC to ', U+201C-201F to "
//   fix_line_breaks       CR LF, CR, U+2028, U+2029, U+0085 to LF
//   remove_control_chars  C0 controls other than tab / LF / FF / CR, DEL, U+206A-206F, U+FEFF, U+FFF9-FFFC,
//                         U+1D173-1D17A and the tag characters U+E0000-E007F removed
//   NFC normalisation
// Not done: ftfy's heuristic repair of mojibake (fix_encoding and its helpers: text decoded with the wrong
// codec, restore_byte_a0, replace_lossy_sequences, decode_inconsistent_utf8) and terminal escapes.
#pragma once
#include <string>

namespace meshdit {

// Invalid UTF-8 reads as U+FFFD.
std::string fix_text(const std::string& text);

// One pass of Python's html.unescape for numeric references and the named entities prompts meet in practice
// (the full HTML5 table has some two thousand names; an unknown name is left as written, as Python leaves it).
std::string html_unescape(const std::string& s);

}  // namespace meshdit
