// `meshdit check --quantize TYPE`: a transformer case run from its weights quantized through a GGUF file as
// `meshdit convert --type TYPE` writes one. The report gives each output's error against the f32 reference and
// claims no pass; an unknown type, or a case that is not a transformer with GGUF files, is an error.
#include "app/check.h"

#include <gtest/gtest.h>

#include "../test_util.h"
#include "app/runners.h"

using namespace meshdit;

namespace {

std::string case_dir(const std::string& name) { return test::fixtures_dir() + "/" + name; }

const Comparison* output_named(const CheckReport& r, const std::string& name) {
  for (const auto& o : r.outputs)
    if (o.name == name) return &o;
  return nullptr;
}

void expect_mentions(const std::string& message, const std::vector<std::string>& needles) {
  for (const auto& n : needles) EXPECT_NE(message.find(n), std::string::npos) << "'" << n << "' not in: " << message;
}

// Wan's case goes through a GGUF file in Wan-AI's original names (general.architecture "wan"): the output differs
// from the reference by the quantization's error, small at q8_0, and the report says no tolerance was applied.
TEST(CheckQuantize, TransformerCaseRunsFromQuantizedGguf) {
  register_builtin_runners();
  CheckOptions opts;
  opts.quantize = "q8_0";
  auto rep = run_check(case_dir("wan22_t2v_transformer"), opts);
  ASSERT_TRUE(rep.ok()) << rep.error().message;
  expect_mentions(rep->quantized, {"q8_0", "tensors quantized", "wan-original names"});
  const Comparison* sample = output_named(*rep, "sample");
  ASSERT_NE(sample, nullptr);
  ASSERT_TRUE(sample->produced) << sample->note;
  EXPECT_GT(sample->rel_l2, 1e-6) << "the weights were not quantized";
  EXPECT_LT(sample->rel_l2, 2e-2);
  EXPECT_GT(sample->max_abs, 0.0);
  EXPECT_FALSE(rep->pass()) << "a quantized run claims no pass";
  EXPECT_FALSE(rep->failed());
  const std::string text = rep->format();
  expect_mentions(text, {"sample", "rel_l2", "quantized (q8_0", "tolerances not applied"});
  EXPECT_EQ(text.find("PASS"), std::string::npos) << text;
  EXPECT_EQ(text.find("tol "), std::string::npos) << text;

  // The same case unquantized: exactly the stored weights, within the case's tolerance.
  auto plain = run_check(case_dir("wan22_t2v_transformer"));
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  EXPECT_TRUE(plain->pass()) << plain->format();
  EXPECT_EQ(plain->quantized, "");
  EXPECT_LT(output_named(*plain, "sample")->rel_l2, sample->rel_l2);
}

TEST(CheckQuantize, UnknownTypeIsAnError) {
  register_builtin_runners();
  CheckOptions opts;
  opts.quantize = "q4_k_m";
  auto rep = run_check(case_dir("flux1_dev_transformer"), opts);
  ASSERT_FALSE(rep.ok());
  expect_mentions(rep.error().message, {"--quantize 'q4_k_m'", "expected one of", "q8_0"});
}

// A VAE, a scheduler, and a transformer whose model has no GGUF files (Mochi): refused before anything runs.
TEST(CheckQuantize, OtherCasesAreRefused) {
  register_builtin_runners();
  CheckOptions opts;
  opts.quantize = "q8_0";
  for (const char* name : {"vae_wan21", "sched_unipc_wan22", "mochi_transformer"}) {
    auto rep = run_check(case_dir(name), opts);
    ASSERT_FALSE(rep.ok()) << name;
    expect_mentions(rep.error().message, {name, "--quantize", "not a transformer with GGUF files", "flux", "wan"});
  }
}

// The CLI prints the figures and exits 0: the run worked, whatever the error.
TEST(CheckQuantize, CliPrintsTheFiguresAndExitsZero) {
  std::string out;
  const int rc = test::run_command(
      std::string("\"") + MESHDIT_CLI + "\" check -q --quantize q4_0 \"" + case_dir("flux1_dev_transformer") + "\"",
      &out);
  EXPECT_EQ(rc, 0) << out;
  expect_mentions(out, {"sample", "max_abs", "quantized (q4_0", "flux-bfl names", "tolerances not applied"});
  EXPECT_EQ(out.find("PASS"), std::string::npos) << out;
  EXPECT_NE(test::run_command(std::string("\"") + MESHDIT_CLI + "\" check --quantize q9 \"" +
                                  case_dir("flux1_dev_transformer") + "\"",
                              &out),
            0);
  expect_mentions(out, {"--quantize 'q9'"});
}

}  // namespace
