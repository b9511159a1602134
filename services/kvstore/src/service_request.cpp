#include "service_request.h"

namespace kvpr::kvstore {

std::string_view type_name(Which which) {
  switch (which) {
    case Which::REGISTER:
      return "register";
    case Which::HEARTBEAT:
      return "heartbeat";
    case Which::UNREGISTER:
      return "unregister";
    case Which::OPEN:
      return "open";
    case Which::RESERVE:
      return "reserve";
    case Which::COMMIT:
      return "commit";
    case Which::LOCATE:
      return "locate";
    case Which::LENGTH:
      return "length";
    case Which::TRUNCATE:
      return "truncate";
    case Which::FREE:
      return "free";
    case Which::STATS:
      return "stats";
    case Which::RESERVE_BATCH:
      return "reserve_batch";
    case Which::COMMIT_BATCH:
      return "commit_batch";
  }
  return "unknown";
}

void decode(wire::KvRequest::Reader in, Request& out) {
  out.deadline_unix_ms = in.getDeadlineUnixMs();
  out.client = get_capability(in.getClient());
  out.which = in.which();
  switch (out.which) {
    case Which::REGISTER: {
      const auto reg = in.getRegister();
      out.name = reg.getName().cStr();
      out.host_threads = reg.getHostThreads();
      const auto shape = reg.getShape();
      out.n_layers = shape.getNLayers();
      out.h = shape.getH();
      out.h_kv = shape.getHKv();
      out.dtype = shape.getDtype();
      break;
    }
    case Which::HEARTBEAT:
    case Which::UNREGISTER:
    case Which::OPEN:
    case Which::STATS:
      break;
    case Which::RESERVE:
    case Which::COMMIT:
    case Which::TRUNCATE: {
      const auto st = out.which == Which::RESERVE  ? in.getReserve()
                      : out.which == Which::COMMIT ? in.getCommit()
                                                   : in.getTruncate();
      out.seq = get_capability(st.getSeq());
      out.n_tokens = st.getNTokens();
      break;
    }
    case Which::RESERVE_BATCH:
    case Which::COMMIT_BATCH: {
      const auto batch =
          out.which == Which::RESERVE_BATCH ? in.getReserveBatch() : in.getCommitBatch();
      const auto seqs = batch.getSeqs();
      out.batch_size = seqs.size();
      if (out.batch_size <= kMaxBatch) {
        for (const auto seq : seqs) out.seqs.push_back(get_capability(seq));
      }
      out.n_tokens = batch.getNTokens();
      break;
    }
    case Which::LOCATE: {
      const auto loc = in.getLocate();
      out.seq = get_capability(loc.getSeq());
      out.layer = loc.getLayer();
      out.part = loc.getPart();
      out.t0 = loc.getT0();
      out.t1 = loc.getT1();
      break;
    }
    case Which::LENGTH:
      out.seq = get_capability(in.getLength());
      break;
    case Which::FREE:
      out.seq = get_capability(in.getFree());
      break;
    default:
      out.known = false;
  }
}

}  // namespace kvpr::kvstore
