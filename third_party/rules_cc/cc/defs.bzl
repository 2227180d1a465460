"""A local stand-in for @rules_cc//cc:defs.bzl: Bazel's native C++ rules.

Debian's bazel-bootstrap (4.2.3) has no network to fetch rules_cc, and
Debian's bazel-rules-cc (0.0.4) is too new for it and fails to load, so
.bazelrc points `--override_repository=rules_cc` here. Bazel 4.2.3's native
rules are what rules_cc of its time wrapped.
"""

def cc_binary(**kwargs):
    native.cc_binary(**kwargs)

def cc_import(**kwargs):
    native.cc_import(**kwargs)

def cc_library(**kwargs):
    native.cc_library(**kwargs)

def cc_test(**kwargs):
    native.cc_test(**kwargs)

def cc_toolchain(**kwargs):
    native.cc_toolchain(**kwargs)

def cc_toolchain_suite(**kwargs):
    native.cc_toolchain_suite(**kwargs)

def objc_library(**kwargs):
    native.objc_library(**kwargs)

def objc_import(**kwargs):
    native.objc_import(**kwargs)

def cc_proto_library(**kwargs):
    native.cc_proto_library(**kwargs)

def fdo_prefetch_hints(**kwargs):
    native.fdo_prefetch_hints(**kwargs)

def fdo_profile(**kwargs):
    native.fdo_profile(**kwargs)
