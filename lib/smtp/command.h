// File: command.h
//
// The value types of the server side of SMTP: a client command as parsed by
// ParseCommand() (command_parser.h), with its verb, raw argument, envelope
// path and typed ESMTP parameters, and CommandError, the reply a server gives
// when a command line cannot be accepted.
//
// These types know nothing of protos or sockets (STYLE §4.8): ingest converts
// them to tern.v1 messages at its edge.
//
// Standards: RFC 5321 §4.1.1 (commands), RFC 1870 (SIZE), RFC 6152 (BODY),
// RFC 6531 (SMTPUTF8), RFC 3461 (RET, ENVID, NOTIFY, ORCPT), RFC 3030 (BDAT),
// RFC 4954 (AUTH).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lib/address/mailbox.h"

namespace tern::smtp {

enum class Verb {
  kUnknown,
  kEhlo,
  kHelo,
  kMail,
  kRcpt,
  kData,
  kRset,
  kNoop,
  kQuit,
  kVrfy,
  kHelp,
  kStarttls,
  kAuth,
  kBdat,
};

// The verb as written in RFC 5321 ("EHLO"), "UNKNOWN" for kUnknown.
const char* VerbName(Verb verb);

// RFC 6152 BODY=.
enum class BodyType { kUnspecified, k7Bit, k8BitMime };

// RFC 3461 RET=.
enum class DsnRet { kUnspecified, kFull, kHdrs };

// RFC 3461 NOTIFY= as bits. The values equal tern.v1.NotifyFlag so a service
// can copy the set as is.
enum NotifyBits : uint32_t {
  kNotifySuccess = 1,
  kNotifyFailure = 2,
  kNotifyDelay = 4,
  kNotifyNever = 8,
};

// The parameters of MAIL FROM that this server understands.
struct MailParameters {
  std::optional<uint64_t> size;   // SIZE=; saturates at UINT64_MAX
  BodyType body = BodyType::kUnspecified;
  bool smtputf8 = false;
  DsnRet ret = DsnRet::kUnspecified;
  std::string envid;              // ENVID=, xtext-decoded; empty if absent
  // RFC 4954 §5 AUTH=, xtext-decoded ("<>" when the client sent that); empty
  // if absent. Informational only: it is never trusted for relaying.
  std::string auth;
  // RFC 8689 REQUIRETLS: the sender requires TLS (with an authenticated
  // peer) on every hop. Whether it is allowed here (a TLS session) is the
  // server's decision, not the parser's.
  bool requiretls = false;
};

// The parameters of RCPT TO that this server understands.
struct RcptParameters {
  uint32_t notify = 0;            // NotifyBits; 0 = not given
  // ORCPT= as "addr-type;decoded-address", e.g. "rfc822;user@example.com";
  // empty if absent.
  std::string orcpt;
};

struct EsmtpParameter {
  std::string keyword;            // upper-cased
  std::string value;              // as sent (not decoded); empty if none
  bool has_value = false;
};

struct Command {
  Verb verb = Verb::kUnknown;
  // The verb as sent, e.g. "ehlo" (useful to log an unknown command).
  std::string verb_text;
  // Everything after the verb and its separating space, with trailing
  // spaces removed: "FROM:<a@b> SIZE=10", "client.example".
  std::string argument;
  // MAIL and RCPT: the parsed path.
  address::Mailbox path;
  // MAIL: the path contained UTF-8 (only possible with SMTPUTF8).
  bool path_non_ascii = false;
  // MAIL and RCPT: the parameters in order, and their typed values.
  std::vector<EsmtpParameter> parameters;
  MailParameters mail;
  RcptParameters rcpt;
  // BDAT (RFC 3030 §2): the chunk size in octets and whether LAST was given.
  uint64_t bdat_size = 0;
  bool bdat_last = false;
  // AUTH (RFC 4954 §4): the mechanism, upper-cased, and the initial response
  // as sent (still base64; "=" stands for an empty response), if any.
  std::string auth_mechanism;
  std::optional<std::string> auth_initial;
};

// A reply for a command that was refused before any state changed, e.g.
// {501, "5.5.4", "Syntax: MAIL FROM:<address>"}.
struct CommandError {
  int code = 500;
  std::string enhanced;           // RFC 3463 "x.y.z"
  std::string text;

  // "501 5.5.4 text\r\n".
  std::string ToString() const;
};

}  // namespace tern::smtp
