# Types every kvpr protocol shares: the error vocabulary (kvpr::ErrorKind) and tensor dtypes.
@0xf604bdfa08a89dd5;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("kvpr::wire");

enum ErrorKind {
  failed @0;         # bad input or a broken invariant: retrying the same thing fails again
  overloaded @1;     # out of a resource: may succeed later or elsewhere
  disconnected @2;   # a peer went away or timed out
  unimplemented @3;  # the request names something this service cannot do
  permissionDenied @4;  # the caller may not touch what it named (not its own)
}

struct Error {
  kind @0 :ErrorKind;
  reason @1 :Text;  # one line naming the offending value
}

enum DType {
  f32 @0;
  f16 @1;
  bf16 @2;
}

enum Policy {
  resident @0;
  transfer @1;
  recompute @2;
  kvpr @3;
}
