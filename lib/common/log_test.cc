#include "lib/common/log.h"

#include "gtest/gtest.h"

namespace tern::log {
namespace {

TEST(Log, DefaultFormatQuotesValuesWithSpaces) {
  EXPECT_EQ(Render(Format::kDefault, "queue", Level::kInfo, "delivered", {{"msg", "abc"}, {"reply", "250 ok"}}),
            "[INFO] [queue] delivered msg=abc reply=\"250 ok\"");
}

TEST(Log, LogfmtEscapesNewlinesSoRemoteTextCannotForgeLines) {
  EXPECT_EQ(Render(Format::kLogfmt, "deliverer", Level::kWarn, "deferred", {{"reply", "451 a\r\nlevel=INFO"}}),
            "level=WARN service=deliverer event=deferred reply=\"451 a\\r\\nlevel=INFO\"");
}

TEST(Log, JsonEscapesQuotesAndControlCharacters) {
  EXPECT_EQ(Render(Format::kJson, "ingest", Level::kError, "x", {{"k", "a\"b\x01"}}),
            "{\"level\":\"ERROR\",\"service\":\"ingest\",\"event\":\"x\",\"k\":\"a\\\"b\\u0001\"}");
}

TEST(Log, ParsesHarakaLevelNamesCaseInsensitively) {
  EXPECT_EQ(*ParseLevel("NOTICE"), Level::kNotice);
  EXPECT_EQ(*ParseLevel("protocol"), Level::kProtocol);
  EXPECT_FALSE(ParseLevel("verbose").ok());
  EXPECT_EQ(*ParseFormat("json"), Format::kJson);
  EXPECT_FALSE(ParseFormat("xml").ok());
}

}  // namespace
}  // namespace tern::log
