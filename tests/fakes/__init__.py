"""The fake Xen toolstack shared by the unit tests and the benchmarks.

* :mod:`tests.fakes.xenstored`: a xenstored speaking the real wire protocol over a unix
  socket, in-process (tests) or as its own process (``python -m tests.fakes.xenstored``);
  as a process it also plays the guests' side of ``control/shutdown`` and fires
  ``@releaseDomain`` when a domain shuts down or is destroyed.
* ``tests/fakes/xl``: an ``xl`` executable keeping the domain table in a file
  (:mod:`tests.fakes.domains`): ``create [-p] [-e] [-n]``, ``unpause``, ``pause``,
  ``list [-v|-l] [name]``, ``destroy``, ``shutdown [-w]``, ``info``, ``domid``, ``dump-core``,
  plus ``fake-exit <name> <reason>`` for a guest that stops on its own.  It writes the
  domain's XenStore nodes and its console log the way libxl and xenconsoled would.
* :mod:`tests.fakes.logmon`: drains many stdout FIFOs from one thread, like Nomad's logmon.
* :mod:`tests.fakes.backend`: an in-memory Backend for the watcher and sampler tests.

The executable finds its state through the environment: ``FAKE_XEN_DIR`` (domain table and
locks), ``FAKE_XEN_CONSOLE_DIR`` (where "xenconsoled" writes ``guest-<name>.log``) and
``XENSTORED_PATH`` (the fake xenstored's socket; without it no XenStore nodes are written).
"""
