// Tests for server/checkpoint/path_policy.h: paths must resolve strictly inside an allowed root;
// "..", absolute and relative symlinks that leave the root are rejected, wherever they hide.
#include "server/checkpoint/path_policy.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace nvfp4::checkpoint {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// <tmp>/pp_<test>/{root/{sub/file.txt}, outside/secret.txt}, all resolved (TempDir may be a
// symlink itself).
class PathPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
    const fs::path base =
        fs::path(testing::TempDir()) / absl::StrCat("ckpt_pp_", info->name(), "_", ::getpid());
    fs::remove_all(base);
    fs::create_directories(base / "root" / "sub");
    fs::create_directories(base / "outside");
    base_ = fs::canonical(base).string();
    root_ = base_ + "/root";
    outside_ = base_ + "/outside";
    std::ofstream(root_ + "/sub/file.txt") << "inside";
    std::ofstream(outside_ + "/secret.txt") << "outside";
    absl::StatusOr<PathPolicy> policy = PathPolicy::Create({root_});
    ASSERT_TRUE(policy.ok()) << policy.status();
    policy_ = *policy;
  }
  void TearDown() override { fs::remove_all(base_); }

  std::string base_, root_, outside_;
  PathPolicy policy_;
};

TEST_F(PathPolicyTest, CreateResolvesRootsAndRejectsMissingOnes) {
  EXPECT_TRUE(policy_.confined());
  EXPECT_THAT(policy_.roots(), ::testing::ElementsAre(root_));
  // A root given through a symlink is stored resolved.
  fs::create_directory_symlink(root_, base_ + "/root_link");
  absl::StatusOr<PathPolicy> via_link = PathPolicy::Create({base_ + "/root_link"});
  ASSERT_TRUE(via_link.ok()) << via_link.status();
  EXPECT_THAT(via_link->roots(), ::testing::ElementsAre(root_));

  EXPECT_EQ(PathPolicy::Create({base_ + "/does-not-exist"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A file is not a directory.
  EXPECT_EQ(PathPolicy::Create({root_ + "/sub/file.txt"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PathPolicy::Create({root_, base_ + "/nope"}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(PathPolicyTest, RootItselfIsNotAllowed) {
  absl::StatusOr<std::string> existing = policy_.CheckExisting(root_);
  EXPECT_EQ(existing.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(existing.status().message(), HasSubstr(root_));
  EXPECT_EQ(policy_.CheckExisting(root_ + "/").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckNew(root_).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckNew(root_ + "/").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckExisting(root_ + "/sub/..").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(PathPolicyTest, FilesAndNewPathsInsideAreAllowed) {
  absl::StatusOr<std::string> file = policy_.CheckExisting(root_ + "/sub/file.txt");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*file, root_ + "/sub/file.txt");
  absl::StatusOr<std::string> dir = policy_.CheckExisting(root_ + "/sub");
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_EQ(*dir, root_ + "/sub");
  // ".." that stays inside is fine for an existing path: it is resolved.
  absl::StatusOr<std::string> dotted = policy_.CheckExisting(root_ + "/sub/../sub/./file.txt");
  ASSERT_TRUE(dotted.ok()) << dotted.status();
  EXPECT_EQ(*dotted, root_ + "/sub/file.txt");

  absl::StatusOr<std::string> fresh = policy_.CheckNew(root_ + "/out/model-nvfp4");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(*fresh, root_ + "/out/model-nvfp4");
  absl::StatusOr<std::string> trailing = policy_.CheckNew(root_ + "/sub/new/");
  ASSERT_TRUE(trailing.ok()) << trailing.status();
  EXPECT_EQ(*trailing, root_ + "/sub/new");
  // An existing path passes CheckNew too.
  absl::StatusOr<std::string> exists = policy_.CheckNew(root_ + "/sub");
  ASSERT_TRUE(exists.ok()) << exists.status();
  EXPECT_EQ(*exists, root_ + "/sub");
}

TEST_F(PathPolicyTest, OutsideAndSiblingPrefixAreDenied) {
  EXPECT_EQ(policy_.CheckExisting(outside_ + "/secret.txt").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckExisting("/").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckNew(outside_ + "/new").status().code(),
            absl::StatusCode::kPermissionDenied);
  // "<root>2" shares the root's string prefix but is not inside it.
  fs::create_directories(root_ + "2");
  std::ofstream(root_ + "2/x") << "x";
  EXPECT_EQ(policy_.CheckExisting(root_ + "2/x").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckNew(root_ + "2/y").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckNew(root_ + "2").status().code(), absl::StatusCode::kPermissionDenied);
  // Through ".." from inside the root.
  EXPECT_EQ(policy_.CheckExisting(root_ + "/../outside/secret.txt").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(PathPolicyTest, DotDotInNewPathIsRejected) {
  // Even when it would land inside the root again.
  EXPECT_EQ(policy_.CheckNew(root_ + "/sub/../new").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckNew(root_ + "/new/../../outside/x").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(policy_.CheckNew(root_ + "/a/../b").status().message(), HasSubstr(".."));
}

TEST_F(PathPolicyTest, AbsoluteSymlinkLeavingTheRootIsRejected) {
  fs::create_directory_symlink(outside_, root_ + "/escape");
  fs::create_symlink(outside_ + "/secret.txt", root_ + "/secret_link");
  // As the path itself.
  EXPECT_EQ(policy_.CheckExisting(root_ + "/escape").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckExisting(root_ + "/secret_link").status().code(),
            absl::StatusCode::kPermissionDenied);
  // As a component.
  absl::StatusOr<std::string> through = policy_.CheckExisting(root_ + "/escape/secret.txt");
  EXPECT_EQ(through.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(through.status().message(), HasSubstr(outside_ + "/secret.txt"));
  // As the parent (or ancestor) of a new path.
  EXPECT_EQ(policy_.CheckNew(root_ + "/escape/new_out").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckNew(root_ + "/escape/a/b/c").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckNew(root_ + "/escape").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(PathPolicyTest, RelativeSymlinkEscapingIsRejected) {
  fs::create_directory_symlink("../outside", root_ + "/rel_escape");
  fs::create_directory_symlink("../../outside", root_ + "/sub/deep_escape");
  EXPECT_EQ(policy_.CheckExisting(root_ + "/rel_escape").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckExisting(root_ + "/rel_escape/secret.txt").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckExisting(root_ + "/sub/deep_escape/secret.txt").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckNew(root_ + "/rel_escape/new").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(policy_.CheckNew(root_ + "/sub/deep_escape/new").status().code(),
            absl::StatusCode::kPermissionDenied);
  // A symlink to the root itself is the root: not strictly inside.
  fs::create_directory_symlink(".", root_ + "/self");
  EXPECT_EQ(policy_.CheckExisting(root_ + "/self").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(PathPolicyTest, DanglingSymlinkLeavingTheRootIsRejected) {
  fs::create_directory_symlink(outside_ + "/not-yet", root_ + "/dangling");
  EXPECT_FALSE(policy_.CheckNew(root_ + "/dangling").ok());
  EXPECT_FALSE(policy_.CheckNew(root_ + "/dangling/new").ok());
  EXPECT_FALSE(policy_.CheckExisting(root_ + "/dangling").ok());
}

TEST_F(PathPolicyTest, SymlinkStayingInsideIsAllowed) {
  fs::create_directory_symlink("sub", root_ + "/alias");
  fs::create_directory_symlink(root_ + "/sub", root_ + "/abs_alias");
  absl::StatusOr<std::string> file = policy_.CheckExisting(root_ + "/alias/file.txt");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*file, root_ + "/sub/file.txt");
  absl::StatusOr<std::string> abs_file = policy_.CheckExisting(root_ + "/abs_alias/file.txt");
  ASSERT_TRUE(abs_file.ok()) << abs_file.status();
  EXPECT_EQ(*abs_file, root_ + "/sub/file.txt");
  absl::StatusOr<std::string> fresh = policy_.CheckNew(root_ + "/alias/new_out");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(*fresh, root_ + "/sub/new_out");
}

TEST_F(PathPolicyTest, RelativePathsAreRejectedWhenConfined) {
  EXPECT_EQ(policy_.CheckExisting("sub/file.txt").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(policy_.CheckNew("out").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(policy_.CheckNew("./out").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(policy_.CheckNew("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(policy_.CheckNew("out").status().message(), HasSubstr("absolute"));
}

TEST_F(PathPolicyTest, MissingExistingPathIsNotFound) {
  EXPECT_EQ(policy_.CheckExisting(root_ + "/no/such/file").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(PathPolicyTest, SeveralRoots) {
  absl::StatusOr<PathPolicy> two = PathPolicy::Create({root_, outside_});
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_TRUE(two->CheckExisting(outside_ + "/secret.txt").ok());
  EXPECT_TRUE(two->CheckExisting(root_ + "/sub/file.txt").ok());
  EXPECT_EQ(two->CheckExisting(base_).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(PathPolicyTest, UnconfinedPolicyAllowsAnything) {
  const PathPolicy open;
  EXPECT_FALSE(open.confined());
  EXPECT_TRUE(open.roots().empty());
  absl::StatusOr<std::string> secret = open.CheckExisting(outside_ + "/secret.txt");
  ASSERT_TRUE(secret.ok()) << secret.status();
  EXPECT_EQ(*secret, outside_ + "/secret.txt");
  EXPECT_TRUE(open.CheckExisting("/").ok());
  EXPECT_TRUE(open.CheckNew(outside_ + "/new/dir").ok());
  EXPECT_TRUE(open.CheckNew("relative/new").ok());
  fs::create_directory_symlink(outside_, root_ + "/escape");
  EXPECT_TRUE(open.CheckExisting(root_ + "/escape/secret.txt").ok());
  EXPECT_TRUE(open.CheckNew(root_ + "/escape/new").ok());
  // An empty root list is the same as the default policy.
  absl::StatusOr<PathPolicy> none = PathPolicy::Create({});
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->confined());
  EXPECT_TRUE(none->CheckNew(outside_ + "/x").ok());
}

TEST_F(PathPolicyTest, UnconfinedPolicyAllowsDotDotInNewPaths) {
  const PathPolicy open;
  absl::Status status = open.CheckNew(root_ + "/../outside/new").status();
  EXPECT_TRUE(status.ok()) << status;
}

}  // namespace
}  // namespace nvfp4::checkpoint
