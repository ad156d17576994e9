"""Suite-wide set-up."""

import signal

# A suite started in the background by a script (`make test &`, a CI step's `cmd &`) inherits
# SIGINT ignored (POSIX: asynchronous commands ignore it), and so would every process it
# starts: the tests that stop a run with Ctrl-C saw it go on. A Python handler, unlike an
# ignored signal, is not inherited across exec: the processes started from here get the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
