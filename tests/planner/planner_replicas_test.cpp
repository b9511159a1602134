// Real `kvpr-planner` processes: two replicas serve one RemotePlanner; a replica killed with
// SIGKILL is passed over within the timeout; with every replica dead plan() fails `disconnected`
// within its deadline; the daemon's flags, SIGTERM and bad flags. Child processes die with the
// test (PR_SET_PDEATHSIG) and are killed and reaped by their owners.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "kvpr/common/error.h"
#include "kvpr/planner/profile_planner.h"
#include "kvpr/planner/remote_planner.h"
#include "planner_test_support.h"

namespace kvpr::planner {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

fs::path scratch_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir =
      fs::temp_directory_path() / ("kvpr-planner-" + std::to_string(getpid()) + "-" + info->name());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// One child process running `kvpr-planner` with `args`; stderr goes to a file. Killed (SIGKILL)
// and reaped when destroyed, unless already reaped.
class Child {
 public:
  Child(const std::vector<std::string>& args, const fs::path& stderr_path) {
    std::vector<std::string> argv_strings{KVPR_PLANNER_BIN};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string err = stderr_path.string();
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {  // only async-signal-safe calls until exec
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      const int null_fd = open("/dev/null", O_WRONLY);
      const int err_fd = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (null_fd >= 0) dup2(null_fd, STDOUT_FILENO);
      if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
      execv(argv[0], argv.data());
      _exit(127);
    }
    if (pid_ < 0) throw std::runtime_error("fork failed");
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  void signal(int sig) { kill(pid_, sig); }
  // The exit status, or -1 (still running after `timeout`) / -2 (killed by a signal).
  int wait(std::chrono::milliseconds timeout) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
      }
      std::this_thread::sleep_for(5ms);
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
};

// A replica on a free port; its endpoint comes from its ready file.
class Replica {
 public:
  explicit Replica(const fs::path& dir, const std::string& name)
      : ready_(dir / (name + ".json")),
        child_({"--listen", "tcp://127.0.0.1:0", "--metrics-port", "-1", "--name", name,
                "--ready-file", ready_.string()},
               dir / (name + ".err")) {
    const auto until = Clock::now() + 5s;
    while (!fs::exists(ready_)) {
      if (Clock::now() > until) throw std::runtime_error("replica " + name + " never got ready");
      std::this_thread::sleep_for(5ms);
    }
    std::ifstream in(ready_);
    const auto j = nlohmann::json::parse(in);
    endpoint_ = j.at("endpoint").get<std::string>();
    EXPECT_EQ(j.at("role").get<std::string>(), "planner");
    EXPECT_EQ(j.at("name").get<std::string>(), name);
  }

  const std::string& endpoint() const { return endpoint_; }
  void kill_now() {
    child_.signal(SIGKILL);
    child_.wait(2s);
  }
  Child& child() { return child_; }

 private:
  fs::path ready_;
  Child child_;
  std::string endpoint_;
};

std::uint64_t plans_served(zmq::context_t& context, const std::string& endpoint) {
  net::RpcClient client(context, endpoint, "planner " + endpoint);
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::PlannerRequest>();
  const auto id = net::next_request_id();
  request.setId(id);
  request.setStats();
  auto frame = client.call<wire::PlannerReply>(message, id, 2000ms);
  return frame->root<wire::PlannerReply>().getStats().getPlanRequests();
}

TEST(PlannerReplicas, TwoReplicasShareTheRequestsOfOneClient) {
  const auto dir = scratch_dir();
  Replica a(dir, "a"), b(dir, "b");
  zmq::context_t context;
  RemotePlanner remote(context, {a.endpoint(), b.endpoint()}, testing::model_shape(), "",
                       kvpr::test_timing::slow(1000ms));
  const auto profile = testing::synthetic_profile();
  EXPECT_EQ(remote.report(profile), 2u);
  ProfilePlanner local(profile, testing::model_shape());
  for (std::int64_t s = 500; s < 4500; s += 500) {
    testing::expect_same_plan(remote.plan(testing::plan_request({s, s / 2})),
                              local.plan(testing::plan_request({s, s / 2})));
  }
  EXPECT_EQ(plans_served(context, a.endpoint()), 4u);
  EXPECT_EQ(plans_served(context, b.endpoint()), 4u);
}

TEST(PlannerReplicas, AKilledReplicaIsPassedOverWithinTheTimeout) {
  const auto dir = scratch_dir();
  Replica a(dir, "a"), b(dir, "b");
  zmq::context_t context;
  constexpr auto kTimeout = kvpr::test_timing::slow(600ms);
  constexpr auto kSlack = kvpr::test_timing::slow(200ms);
  RemotePlanner remote(context, {a.endpoint(), b.endpoint()}, testing::model_shape(), "", kTimeout);
  const auto profile = testing::synthetic_profile();
  ASSERT_EQ(remote.report(profile), 2u);
  ProfilePlanner local(profile, testing::model_shape());
  remote.plan(testing::plan_request({1000}));

  a.kill_now();
  for (std::int64_t s = 1000; s < 1600; s += 100) {
    const auto start = Clock::now();
    const auto plan = remote.plan(testing::plan_request({s}));
    EXPECT_LT(Clock::now() - start, kTimeout + kSlack);
    testing::expect_same_plan(plan, local.plan(testing::plan_request({s})));
  }
  EXPECT_GE(remote.failovers(), 1);

  b.kill_now();
  const auto start = Clock::now();
  try {
    remote.plan(testing::plan_request({2000}));
    FAIL() << "planned with every replica dead";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::disconnected);
    EXPECT_NE(std::string(e.what()).find(a.endpoint()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(b.endpoint()), std::string::npos) << e.what();
  }
  EXPECT_LT(Clock::now() - start, kTimeout + kSlack);
  // Every replica marked down: still tried, still bounded.
  const auto again = Clock::now();
  EXPECT_THROW(remote.plan(testing::plan_request({2000})), Error);
  EXPECT_LT(Clock::now() - again, kTimeout + kSlack);
}

TEST(PlannerReplicas, ReportToleratesADeadReplica) {
  const auto dir = scratch_dir();
  Replica a(dir, "a"), b(dir, "b");
  b.kill_now();
  zmq::context_t context;
  RemotePlanner remote(context, {a.endpoint(), b.endpoint()}, testing::model_shape(), "",
                       kvpr::test_timing::slow(500ms));
  EXPECT_EQ(remote.report(testing::synthetic_profile()), 1u);
  EXPECT_EQ(remote.report_failures(), 1);
  EXPECT_EQ(remote.plan(testing::plan_request({100, 200})).l.size(), 2u);
}

TEST(PlannerDaemon, StopsOnSigtermWithExitCodeZero) {
  const auto dir = scratch_dir();
  Replica a(dir, "a");
  a.child().signal(SIGTERM);
  EXPECT_EQ(a.child().wait(3s), 0);
}

TEST(PlannerDaemon, BadFlagsExitOneWithOneLine) {
  const auto dir = scratch_dir();
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--bogus"},
           {"--metrics-port", "many"},
           {"--listen", "nonsense://x", "--metrics-port", "-1"}}) {
    SCOPED_TRACE(args.front());
    Child child(args, dir / "err.txt");
    EXPECT_EQ(child.wait(3s), 1);
    std::ifstream in(dir / "err.txt");
    std::stringstream text;
    text << in.rdbuf();
    const auto err = text.str();
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    EXPECT_TRUE(err.starts_with("kvpr-planner: ")) << err;
  }
}

TEST(PlannerDaemon, HelpExitsZero) {
  const auto dir = scratch_dir();
  Child child({"--help"}, dir / "err.txt");
  EXPECT_EQ(child.wait(3s), 0);
}

}  // namespace
}  // namespace kvpr::planner
