// The request bodies `meshdit serve` takes: what each field becomes, and a refusal naming the field for
// each kind of bad input.
#include "app/serve_request.h"

#include <gtest/gtest.h>

using namespace meshdit;

namespace {

const RequestDefaults kDefaults{128, 128, 20};

ServeLimits limits() {
  ServeLimits l;
  l.memory_bytes = 64.0 * 1073741824.0;  // the tests do not depend on this machine's free memory
  return l;
}

std::string field_of(const Result<ImageRequest>& r) { return r.ok() ? "(accepted)" : error_field(r.error()); }

}  // namespace

TEST(ServeRequest, OpenAiFieldsAndDefaults) {
  auto r = parse_openai_request(R"({"prompt": "a red circle", "n": 2, "size": "64x32", "response_format": "b64_json",
      "negative_prompt": "blue", "steps": 4, "guidance": 3.5, "seed": 42, "true_cfg": 2, "model": "x", "user": "u"})",
                                kDefaults, limits());
  ASSERT_TRUE(r.ok()) << r.error().message;
  const GenerateOptions& o = r->options;
  EXPECT_EQ(o.prompt, std::vector<std::string>{"a red circle"});
  EXPECT_EQ(o.negative_prompt, std::vector<std::string>{"blue"});
  EXPECT_EQ(o.num_images_per_prompt, 2);
  EXPECT_EQ(o.width, 64);
  EXPECT_EQ(o.height, 32);
  EXPECT_EQ(o.steps, 4);
  EXPECT_FLOAT_EQ(*o.guidance_scale, 3.5f);
  EXPECT_FLOAT_EQ(*o.true_cfg_scale, 2.0f);
  EXPECT_EQ(o.seed, 42u);
  EXPECT_FALSE(r->random_seed);

  auto d = parse_openai_request(R"({"prompt": "x"})", kDefaults, limits());
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->options.width, 128);
  EXPECT_EQ(d->options.height, 128);
  EXPECT_EQ(d->options.steps, 20);
  EXPECT_EQ(d->options.num_images_per_prompt, 1);
  EXPECT_FALSE(d->options.guidance_scale.has_value());
  EXPECT_TRUE(d->random_seed);
  EXPECT_LT(d->options.seed, uint64_t(1) << 32);
}

TEST(ServeRequest, A1111FieldsAndRandomSeed) {
  auto r = parse_a1111_request(R"({"prompt": "a square", "negative_prompt": "", "width": 48, "height": 80,
      "steps": 3, "cfg_scale": 7, "seed": -1, "batch_size": 3, "n_iter": 1, "send_images": true, "save_images": false})",
                               kDefaults, limits());
  ASSERT_TRUE(r.ok()) << r.error().message;
  const GenerateOptions& o = r->options;
  EXPECT_TRUE(o.negative_prompt.empty()) << "an empty negative prompt is none";
  EXPECT_EQ(o.width, 48);
  EXPECT_EQ(o.height, 80);
  EXPECT_EQ(o.steps, 3);
  EXPECT_FLOAT_EQ(*o.guidance_scale, 7.0f);
  EXPECT_EQ(o.num_images_per_prompt, 3);
  EXPECT_TRUE(r->random_seed);
  auto s = parse_a1111_request(R"({"prompt": "a", "seed": 12345678901})", kDefaults, limits());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->options.seed, 12345678901u);
}

TEST(ServeRequest, CacheFieldInBothDialects) {
  auto a = parse_openai_request(R"({"prompt": "a", "cache": "fbcache:threshold=0.1"})", kDefaults, limits());
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_TRUE(a->options.cache.enabled());
  EXPECT_FLOAT_EQ(a->options.cache.threshold, 0.1f);
  auto b = parse_a1111_request(R"({"prompt": "a", "cache": "dbcache:F8B0"})", kDefaults, limits());
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_TRUE(b->options.cache.enabled());
  auto bad = parse_a1111_request(R"({"prompt": "a", "cache": "dbcache:bogus=1"})", kDefaults, limits());
  EXPECT_EQ(field_of(bad), "cache");
}

struct Bad {
  std::string name, body, field, words;
};

class ServeRequestBad : public ::testing::TestWithParam<Bad> {};

TEST_P(ServeRequestBad, RefusedNamingTheField) {
  const Bad& c = GetParam();
  const bool a1111 = c.name.rfind("A1111", 0) == 0;
  ServeLimits l = limits();
  l.max_prompt_bytes = 1000;
  auto r = a1111 ? parse_a1111_request(c.body, kDefaults, l) : parse_openai_request(c.body, kDefaults, l);
  ASSERT_FALSE(r.ok()) << c.body;
  EXPECT_EQ(error_field(r.error()), c.field) << r.error().message;
  EXPECT_NE(r.error().message.find(c.words), std::string::npos) << r.error().message;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ServeRequestBad,
    ::testing::Values(
        Bad{"MalformedJson", R"({"prompt": "a",)", "body", "malformed JSON"},
        Bad{"NotAnObject", R"(["a"])", "body", "must be a JSON object"},
        Bad{"MissingPrompt", R"({"n": 1})", "prompt", "required"},
        Bad{"PromptNotString", R"({"prompt": 5})", "prompt", "must be a string, not integer"},
        Bad{"EmptyPrompt", R"({"prompt": ""})", "prompt", "must not be empty"},
        Bad{"PromptTooLong", R"({"prompt": ")" + std::string(1001, 'a') + R"("})", "prompt", "over the limit"},
        Bad{"UnknownField", R"({"prompt": "a", "sampler": "euler"})", "sampler", "unknown field"},
        Bad{"NWrongType", R"({"prompt": "a", "n": "2"})", "n", "must be an integer"},
        Bad{"NTooMany", R"({"prompt": "a", "n": 100})", "n", "out of range"},
        Bad{"SizeNotWxH", R"({"prompt": "a", "size": "big"})", "size", "is not WIDTHxHEIGHT"},
        Bad{"SizeNotMultipleOf16", R"({"prompt": "a", "size": "100x64"})", "size", "not a multiple of 16"},
        Bad{"SizeTooLarge", R"({"prompt": "a", "size": "65536x64"})", "size", "out of range"},
        Bad{"StepsZero", R"({"prompt": "a", "steps": 0})", "steps", "out of range"},
        Bad{"StepsFloat", R"({"prompt": "a", "steps": 2.5})", "steps", "must be an integer, not number"},
        Bad{"GuidanceString", R"({"prompt": "a", "guidance": "high"})", "guidance", "must be a number"},
        Bad{"SeedNegative", R"({"prompt": "a", "seed": -5})", "seed", "-1 (random)"},
        Bad{"ResponseFormatUrl", R"({"prompt": "a", "response_format": "url"})", "response_format", "only b64_json"},
        Bad{"A1111WidthNotMultipleOf16", R"({"prompt": "a", "width": 72})", "width", "not a multiple of 16"},
        Bad{"A1111HeightWrongType", R"({"prompt": "a", "height": "64"})", "height", "must be an integer"},
        Bad{"A1111UnknownField", R"({"prompt": "a", "sampler_name": "Euler"})", "sampler_name", "unknown field"},
        Bad{"A1111SaveImages", R"({"prompt": "a", "save_images": true})", "save_images", "never writes files"},
        Bad{"A1111StepsTooMany", R"({"prompt": "a", "steps": 100000})", "steps", "out of range"}),
    [](const ::testing::TestParamInfo<Bad>& i) { return i.param.name; });

TEST(ServeRequest, TooLargeForMemoryIsRefusedWithTheEstimate) {
  ServeLimits l = limits();
  l.memory_bytes = 1e9;
  auto r = parse_openai_request(R"({"prompt": "a", "size": "2048x2048", "n": 4})", kDefaults, l);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(error_field(r.error()), "size");
  EXPECT_NE(r.error().message.find("GiB (estimate)"), std::string::npos) << r.error().message;
  EXPECT_TRUE(parse_openai_request(R"({"prompt": "a", "size": "64x64"})", kDefaults, l).ok());
  auto a = parse_a1111_request(R"({"prompt": "a", "width": 2048, "height": 2048, "batch_size": 4})", kDefaults, l);
  EXPECT_EQ(field_of(a), "width");
}

TEST(ServeRequest, EstimateGrowsWithPixelsAndImages) {
  const double one = estimate_generation_bytes(1024, 1024, 1);
  EXPECT_GT(one, 1e9);  // a Flux-size decode at 1024^2 needs gigabytes
  EXPECT_NEAR(estimate_generation_bytes(1024, 1024, 2), 2 * one, 1);
  EXPECT_NEAR(estimate_generation_bytes(2048, 1024, 1), 2 * one, 1);
}
