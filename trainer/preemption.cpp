#include "trainer/preemption.h"

#include <csignal>

namespace moetrain::trainer {
namespace {

volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_preemption_signal(int sig) {
  if (g_signal != 0) {  // second notice: give up waiting for the step boundary
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_signal = sig;
}

}  // namespace

void install_preemption_handlers() {
  struct sigaction action {};
  action.sa_handler = on_preemption_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGUSR1, &action, nullptr);
}

bool preemption_requested() { return g_signal != 0; }
int preemption_signal() { return g_signal; }

}  // namespace moetrain::trainer
