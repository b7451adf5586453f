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
// Not carried over, with an error rather than a silent change of where mail
// goes: domain_selector=mail_from together with per-domain or per-address
// sections (routes by sender: use a get_mx hook, README "Hooks"). Ignored as
// Haraka ignores them for outbound, or as not about delivery: [user@domain]
// sections under rcpt_to, check_sender, check_recipient, queue,
// one_message_per_rcpt, max_connections, timeout, connect_timeout.
//
// outbound_routes.ini, Tern's own file, wins: a domain (or `*`) it routes
// keeps that route.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "lib/config/config_dir.h"
#include "services/deliverer/static_routes.h"

namespace tern::deliverer {

// The routes smtp_forward.ini gives (above); none when the plugin is not
// enabled or the file is missing. A bad value names the file, section and
// key.
absl::StatusOr<std::vector<StaticRoute>> LoadSmtpForwardRoutes(const config::ConfigDir& dir);

}  // namespace tern::deliverer
