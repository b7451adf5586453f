// File: signals.h
//
// Process signal handling for the services: BlockServiceSignals() must be
// called in main() before any thread starts, so that every thread inherits
// the mask and SIGINT/SIGTERM/SIGHUP are only ever taken by WaitForSignal(),
// which a dedicated thread (or main) calls in a loop.
#pragma once

namespace tern {

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and threads it
// starts afterwards); ignores SIGPIPE (sockets report EPIPE instead).
void BlockServiceSignals();

// Waits for one of the blocked signals and returns its number.
int WaitForSignal();

}  // namespace tern
