// File: smtp_forward.h
//
// Haraka's queue/smtp_forward plugin, as routes: a Haraka config directory
// that sends relayed mail through a smarthost with smtp_forward.ini keeps
// doing so when Tern is pointed at it, instead of Tern delivering straight
// to the recipients' MX hosts (which, from a network that blocks port 25 or
// a sender whose SPF names only the smarthost, would fail or hurt).
//
// Only when Haraka would use the file: `config/plugins` lists
// `queue/smtp_forward` (or `smtp_forward`). Haraka ships an smtp_forward.ini
// pointing at localhost:2555, so the file alone says nothing.
//
// What Haraka does with it for outbound (relayed) mail, and the routes that
// give the same destinations (plugins/queue/smtp_forward.js, 3.x):
//   - a section per recipient domain ([example.com], with the default
//     domain_selector=rcpt_to): its mail goes to the section's host (else
//     [main]'s) and port (else [main]'s, else 25), with the section's
//     auth_type/auth_user/auth_pass: the get_mx hook, and the queue_outbound
//     forward when that is on. A route for that domain.
//   - [main] enable_outbound=true (Haraka's default: false): every other
//     relayed message goes to [main] host and port (or every host of
//     forwarding_host_pool, "host:port,host:port"), with [main]'s AUTH. A
//     route for `*`.
//   - enable_tls=false written out (in the section, or [main] for `*`): no
//     STARTTLS to that host (tls=none). Otherwise STARTTLS when offered,
//     under tls.ini's policy, where Haraka's forward sends in the clear
//     unless enable_tls=true; smtp_forward.ini [tls] rejectUnauthorized=true
//     makes it required with a verified certificate (tls=required).
// Haraka forwards at queue time and hands the smarthost's answer to the
// client; Tern has queued the message and said 250 by then, so the
// smarthost's 4xx is retried and its 5xx bounced, as for any route.
//
//   - domain_selector=mail_from: the sections name senders instead. Haraka's
//     get_mx sends a message whose envelope sender's domain has a section to
//     that section's host; with enable_outbound=true its queue_outbound
//     forward also takes a section named by the sender's whole address
//     (user@domain) first, and [main] for every other sender. Routes by
//     sender (FindSender): address sections (enable_outbound only), then
//     domain sections; [main] stays the `*` route.
// Ignored as Haraka ignores them for outbound, or as not about delivery:
// [user@domain] sections under rcpt_to, check_sender, check_recipient,
// queue, one_message_per_rcpt, max_connections, timeout, connect_timeout.
//
// outbound_routes.ini, Tern's own file, wins: a domain (or `*`) it routes
// keeps that route, a recipient domain it routes keeps it over a sender's.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "lib/config/config_dir.h"
#include "services/deliverer/static_routes.h"

namespace tern::deliverer {

struct SmtpForwardRoutes {
  // By recipient domain (and `*` for [main] with enable_outbound).
  std::vector<StaticRoute> by_domain;
  // By sender (domain_selector=mail_from): each route's `domain` is its
  // section name, an address or a domain, lower case.
  StaticRoutes by_sender;
};

// The routes smtp_forward.ini gives (above); none when the plugin is not
// enabled or the file is missing. A bad value names the file, section and
// key.
absl::StatusOr<SmtpForwardRoutes> LoadSmtpForwardRoutes(const config::ConfigDir& dir);

}  // namespace tern::deliverer
