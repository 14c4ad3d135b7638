"""The real npm CLI (and pnpm, yarn 1 and yarn 4) against the real server process and
the fake upstream: the workflows a team runs every day, in order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pexpect
import pytest

from tests.fakes.upstream import FakeUpstream

from .conftest import Cli, Server

pytestmark = pytest.mark.e2e


def make_package(where: Path, name: str, version: str, deps: dict[str, str] | None = None) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "package.json").write_text(json.dumps(
        {"name": name, "version": version, "main": "index.js", "description": f"{name} for tests",
         "keywords": ["overlaystore-e2e"], "dependencies": deps or {}, "license": "MIT"}))
    (where / "index.js").write_text(f"module.exports = {json.dumps(name + '@' + version)};\n")
    return where


def make_project(where: Path, deps: dict[str, str]) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "package.json").write_text(json.dumps({"name": "app", "version": "0.0.0", "private": True, "dependencies": deps}))
    return where


def login(cli: Cli, user: str, password: str = "s3cret-pass") -> None:
    """``npm adduser`` at its real prompts (it reads the password from a TTY)."""
    child = pexpect.spawn(
        shutil.which("npm") or "npm", ["adduser", "--auth-type=legacy"],
        env=cli.env(), cwd=str(cli.home), encoding="utf-8", timeout=30,
    )
    child.expect("Username:")
    child.sendline(user)
    child.expect("Password:")
    child.sendline(password)
    child.expect("Email")
    child.sendline(f"{user}@example.com")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "_authToken" in cli.npmrc.read_text()


def installed_version(project: Path, name: str) -> str:
    return str(json.loads((project / "node_modules" / name / "package.json").read_text())["version"])


@pytest.fixture(scope="module")
def alice(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Cli:
    home = tmp_path_factory.mktemp("alice")
    cli = Cli(home, server.url)
    cli.npmrc.write_text(f"registry={server.url}/\n")
    login(cli, "alice")
    return cli


def test_whoami_and_ping(alice: Cli) -> None:
    assert alice.npm("whoami").stdout.strip() == "alice"
    alice.npm("ping")


def test_publish_and_install_a_mixed_tree(alice: Cli, server: Server, tmp_path: Path, upstream: FakeUpstream) -> None:
    alice.npm("publish", cwd=make_package(tmp_path / "a", "acme-utils", "1.0.0", {"left-pad": "^1.0.0"}))
    alice.npm("publish", cwd=make_package(tmp_path / "b", "@acme/widget", "1.0.0", {"acme-utils": "^1.0.0", "is-odd-fake": "1.0.0"}))
    view = json.loads(alice.npm("view", "@acme/widget", "--json").stdout)
    assert view["version"] == "1.0.0" and str(view["_npmUser"]).startswith("alice")

    project = make_project(tmp_path / "app", {"@acme/widget": "^1.0.0"})
    alice.npm("install", cwd=project)
    assert installed_version(project, "@acme/widget") == "1.0.0"
    assert installed_version(project, "acme-utils") == "1.0.0"
    assert installed_version(project, "left-pad") == "1.3.0"
    assert installed_version(project, "is-number-fake") == "2.1.0"
    lock = json.loads((project / "package-lock.json").read_text())
    resolved = {k: v.get("resolved", "") for k, v in lock["packages"].items() if k}
    assert all(url.startswith(server.url + "/") for url in resolved.values()), resolved

    # npm ci from the lockfile with a fresh npm cache.
    shutil.rmtree(project / "node_modules")
    shutil.rmtree(alice.home / "npm-cache", ignore_errors=True)
    alice.npm("ci", cwd=project)
    assert installed_version(project, "left-pad") == "1.3.0"

    # Wipe the proxy cache: installs keep working, published data is untouched.
    shutil.rmtree(server.root / "cache")
    shutil.rmtree(project / "node_modules")
    shutil.rmtree(alice.home / "npm-cache", ignore_errors=True)
    alice.npm("ci", cwd=project)
    assert installed_version(project, "@acme/widget") == "1.0.0"

    # Restart the server: still there.
    server.restart()
    shutil.rmtree(project / "node_modules")
    shutil.rmtree(alice.home / "npm-cache", ignore_errors=True)
    alice.npm("ci", cwd=project)
    assert installed_version(project, "is-odd-fake") == "1.0.0"


def test_republish_is_refused(alice: Cli, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "r", "acme-republish", "1.0.0")
    alice.npm("publish", cwd=pkg)
    (pkg / "index.js").write_text("module.exports = 'changed';\n")
    result = alice.npm("publish", "--force", cwd=pkg, check=False)
    assert result.returncode != 0
    assert "cannot publish over the previously published versions" in result.stderr


def test_dist_tags_deprecate_and_unpublish(alice: Cli, tmp_path: Path) -> None:
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        alice.npm("publish", cwd=make_package(tmp_path / version, "acme-tags", version))
    alice.npm("dist-tag", "add", "acme-tags@1.1.0", "stable")
    tags = alice.npm("dist-tag", "ls", "acme-tags").stdout
    assert "stable: 1.1.0" in tags and "latest: 2.0.0" in tags
    alice.npm("dist-tag", "rm", "acme-tags", "stable")
    assert "stable" not in alice.npm("dist-tag", "ls", "acme-tags").stdout

    alice.npm("deprecate", "acme-tags@<2", "use 2.x")
    view = json.loads(alice.npm("view", "acme-tags", "versions", "--json").stdout)
    assert view == ["1.0.0", "1.1.0", "2.0.0"]
    deprecated = alice.npm("view", "acme-tags@1.0.0", "deprecated").stdout.strip()
    assert deprecated == "use 2.x"
    alice.npm("deprecate", "acme-tags@<2", "")
    assert alice.npm("view", "acme-tags@1.0.0", "deprecated").stdout.strip() == ""

    alice.npm("unpublish", "acme-tags@2.0.0")
    versions = json.loads(alice.npm("view", "acme-tags", "versions", "--json").stdout)
    assert versions == ["1.0.0", "1.1.0"]
    assert alice.npm("view", "acme-tags", "dist-tags.latest").stdout.strip() == "1.1.0"
    again = alice.npm("publish", cwd=tmp_path / "2.0.0", check=False)
    assert again.returncode != 0

    alice.npm("unpublish", "acme-tags", "--force")
    gone = alice.npm("view", "acme-tags", check=False)
    assert gone.returncode != 0 and "E404" in gone.stderr


def test_search(alice: Cli, tmp_path: Path) -> None:
    alice.npm("publish", cwd=make_package(tmp_path / "s", "acme-searchable", "1.0.0"))
    found = json.loads(alice.npm("search", "acme-searchable", "--json").stdout)
    assert any(p["name"] == "acme-searchable" for p in found)


def test_owner_and_other_users(alice: Cli, server: Server, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    alice.npm("publish", cwd=make_package(tmp_path / "o", "acme-owned", "1.0.0"))
    bob = Cli(tmp_path_factory.mktemp("bob"), server.url)
    bob.npmrc.write_text(f"registry={server.url}/\n")
    login(bob, "bob")
    refused = bob.npm("publish", cwd=make_package(tmp_path / "o2", "acme-owned", "1.0.1"), check=False)
    assert refused.returncode != 0 and "E403" in refused.stderr
    alice.npm("owner", "add", "bob", "acme-owned")
    owners = alice.npm("owner", "ls", "acme-owned").stdout
    assert "alice" in owners and "bob" in owners
    bob.npm("publish", cwd=tmp_path / "o2")


def test_tokens_and_logout(alice: Cli, server: Server, tmp_path_factory: pytest.TempPathFactory) -> None:
    carol = Cli(tmp_path_factory.mktemp("carol"), server.url)
    carol.npmrc.write_text(f"registry={server.url}/\n")
    login(carol, "carol", "carol-password")
    out = carol.npm("token", "create", "--json", input="carol-password\n").stdout
    created = json.loads(out[out.index("{"):])  # after the "npm password:" prompt
    secret = created["token"]
    listed = json.loads(carol.npm("token", "list", "--json").stdout)
    # The list shows tokens redacted, never whole: find ours by its visible prefix.
    assert all(secret not in json.dumps(t) for t in listed)
    (mine,) = [t for t in listed if secret.startswith(t["token"].rstrip(".…"))
               and t["created"] == created["created"]]
    carol.npm("token", "revoke", mine["key"][:8])
    listed = json.loads(carol.npm("token", "list", "--json").stdout)
    assert all(t["key"] != mine["key"] for t in listed)
    with carol.npmrc.open() as f:
        assert secret not in f.read()

    token_line = [line for line in carol.npmrc.read_text().splitlines() if "_authToken" in line][0]
    carol.npm("logout")
    # The old token is revoked on the server, not just forgotten locally.
    with carol.npmrc.open("a") as f:
        f.write(token_line + "\n")
    result = carol.npm("whoami", check=False)
    assert result.returncode != 0 and "401" in result.stderr


def test_pnpm_installs_a_mixed_tree(alice: Cli, tmp_path: Path) -> None:
    alice.npm("publish", cwd=make_package(tmp_path / "p", "@acme/for-pnpm", "1.0.0", {"is-odd-fake": "^1.0.0"}))
    project = make_project(tmp_path / "pnpm-app", {"@acme/for-pnpm": "^1.0.0", "left-pad": "1.1.0"})
    alice.pnpm("install", cwd=project)
    assert installed_version(project, "@acme/for-pnpm") == "1.0.0"
    assert installed_version(project, "left-pad") == "1.1.0"
    pnpm_store = project / "node_modules" / ".pnpm"
    assert any(p.name.startswith("is-number-fake@2.1.0") for p in pnpm_store.iterdir())


def test_pnpm_publishes_then_reinstalls_from_its_lockfile(alice: Cli, tmp_path: Path) -> None:
    package = make_package(tmp_path / "pp", "@acme/from-pnpm", "1.0.0", {"left-pad": "^1.0.0"})
    alice.pnpm("publish", "--no-git-checks", cwd=package)
    view = json.loads(alice.npm("view", "@acme/from-pnpm", "--json").stdout)
    assert view["version"] == "1.0.0" and view["_npmUser"].startswith("alice ")  # npm shows "name <email>"
    alice.pnpm("publish", "--no-git-checks", "--tag", "next",
               cwd=make_package(tmp_path / "pp2", "@acme/from-pnpm", "2.0.0-beta.1"))
    tags = json.loads(alice.npm("view", "@acme/from-pnpm", "dist-tags", "--json").stdout)
    assert tags == {"latest": "1.0.0", "next": "2.0.0-beta.1"}
    project = make_project(tmp_path / "pnpm-app-2", {"@acme/from-pnpm": "^1.0.0"})
    alice.pnpm("install", cwd=project)
    lock = (project / "pnpm-lock.yaml").read_text()
    assert "'@acme/from-pnpm@1.0.0'" in lock and "left-pad@1.3.0" in lock
    # a clean checkout: no node_modules, no pnpm store, the lockfile as it is
    shutil.rmtree(project / "node_modules")
    shutil.rmtree(alice.home / "xdg-data", ignore_errors=True)
    shutil.rmtree(alice.home / "pnpm-home", ignore_errors=True)
    alice.pnpm("install", "--frozen-lockfile", cwd=project)
    assert installed_version(project, "@acme/from-pnpm") == "1.0.0"
    assert (project / "pnpm-lock.yaml").read_text() == lock


def test_yarn_installs_a_mixed_tree_and_reinstalls_from_its_lockfile(
    alice: Cli, server: Server, tmp_path: Path
) -> None:
    alice.npm("publish", cwd=make_package(tmp_path / "p", "@acme/for-yarn", "1.0.0", {"is-odd-fake": "^1.0.0"}))
    project = make_project(tmp_path / "yarn-app", {"@acme/for-yarn": "^1.0.0", "left-pad": "1.1.0"})
    alice.yarn("install", cwd=project)
    assert installed_version(project, "@acme/for-yarn") == "1.0.0"
    assert installed_version(project, "left-pad") == "1.1.0"
    assert installed_version(project, "is-odd-fake").startswith("1.")
    lock = (project / "yarn.lock").read_text()
    resolved = [line.split('"')[1] for line in lock.splitlines() if line.strip().startswith("resolved ")]
    assert len(resolved) >= 4 and all(url.startswith(server.url + "/") for url in resolved), resolved
    # a clean checkout: no node_modules, no yarn cache, the lockfile as it is
    shutil.rmtree(project / "node_modules")
    shutil.rmtree(alice.home / "yarn-cache")
    alice.yarn("install", "--frozen-lockfile", cwd=project)
    assert installed_version(project, "@acme/for-yarn") == "1.0.0"
    assert (project / "yarn.lock").read_text() == lock


def test_yarn_publish_then_npm_and_yarn_read_it(alice: Cli, tmp_path: Path) -> None:
    package = make_package(tmp_path / "yp", "@acme/from-yarn", "1.0.0")
    alice.yarn("publish", "--new-version", "1.0.0", cwd=package)
    view = json.loads(alice.npm("view", "@acme/from-yarn", "--json").stdout)
    assert view["version"] == "1.0.0" and view["dist-tags"] == {"latest": "1.0.0"}
    info = json.loads(alice.yarn("info", "@acme/from-yarn", "--json").stdout)
    assert info["data"]["versions"] == ["1.0.0"]
    # yarn bumps and publishes the next version itself; the tarball it sent is the one served
    alice.yarn("publish", "--new-version", "1.1.0", "--no-git-tag-version", cwd=package)
    project = make_project(tmp_path / "yarn-app-2", {"@acme/from-yarn": "^1.0.0"})
    alice.yarn("install", cwd=project)
    assert installed_version(project, "@acme/from-yarn") == "1.1.0"


def yarn4_project(where: Path, deps: dict[str, str]) -> Path:
    project = make_project(where, deps)
    (project / "yarn.lock").write_text("")  # marks the project root for yarn 4
    # Since 4.15 yarn hides versions younger than a day (npmMinimalAgeGate),
    # which a package published a moment ago is. The README's advice: exempt
    # your own scope. Upstream packages stay gated, on the times we serve.
    (project / ".yarnrc.yml").write_text('npmPreapprovedPackages:\n  - "@acme/*"\n')
    return project


def test_yarn4_installs_a_mixed_tree_and_reinstalls_immutably(alice: Cli, server: Server, tmp_path: Path) -> None:
    alice.npm("publish", cwd=make_package(tmp_path / "p", "@acme/for-berry", "1.0.0", {"is-odd-fake": "^1.0.0"}))
    project = yarn4_project(tmp_path / "berry-app", {"@acme/for-berry": "^1.0.0", "left-pad": "1.1.0"})
    alice.yarn4("install", cwd=project)
    assert installed_version(project, "@acme/for-berry") == "1.0.0"
    assert installed_version(project, "left-pad") == "1.1.0"
    assert installed_version(project, "is-number-fake") == "2.1.0"
    lock = (project / "yarn.lock").read_text()
    assert '"@acme/for-berry@npm:1.0.0"' in lock and '"is-number-fake@npm:2.1.0"' in lock
    # a clean checkout: no node_modules, no yarn cache, the lockfile must not change
    shutil.rmtree(project / "node_modules")
    shutil.rmtree(alice.home / "yarn4-cache")
    alice.yarn4("install", "--immutable", cwd=project)
    assert installed_version(project, "@acme/for-berry") == "1.0.0"
    assert (project / "yarn.lock").read_text() == lock


def test_yarn4_publish_whoami_and_info(alice: Cli, tmp_path: Path) -> None:
    assert "YN0000: alice\n" in alice.yarn4("npm", "whoami").stdout

    def package(where: Path, version: str) -> Path:
        made = make_package(where, "@acme/from-berry", version)
        (made / "yarn.lock").write_text("")
        alice.yarn4("install", cwd=made)  # yarn 4 publishes only what its lockfile knows
        return made

    first = package(tmp_path / "bp", "1.0.0")
    alice.yarn4("npm", "publish", cwd=first)
    view = json.loads(alice.npm("view", "@acme/from-berry", "--json").stdout)
    assert view["version"] == "1.0.0" and view["dist-tags"] == {"latest": "1.0.0"}
    alice.yarn4("npm", "publish", "--tag", "next", cwd=package(tmp_path / "bp2", "2.0.0-rc.1"))
    info = json.loads(alice.yarn4("npm", "info", "@acme/from-berry", "--fields", "dist-tags,versions", "--json",
                                  cwd=first).stdout)
    assert info["dist-tags"] == {"latest": "1.0.0", "next": "2.0.0-rc.1"}
    assert info["versions"] == ["1.0.0", "2.0.0-rc.1"]
    # what yarn sent is what yarn installs
    project = yarn4_project(tmp_path / "berry-app-2", {"@acme/from-berry": "next"})
    alice.yarn4("install", cwd=project)
    assert installed_version(project, "@acme/from-berry") == "2.0.0-rc.1"


def test_star_unstar_and_stars(alice: Cli, server: Server, tmp_path_factory: pytest.TempPathFactory,
                               tmp_path: Path) -> None:
    for name in ("acme-starry", "acme-bright"):
        alice.npm("publish", cwd=make_package(tmp_path / name, name, "1.0.0"))
        alice.npm("star", name)
    assert alice.npm("stars").stdout.split() == ["acme-bright", "acme-starry"]
    alice.npm("unstar", "acme-bright")
    # Anyone may list another user's stars, by name.
    erin = Cli(tmp_path_factory.mktemp("erin"), server.url)
    erin.npmrc.write_text(f"registry={server.url}/\n")
    assert erin.npm("stars", "alice").stdout.split() == ["acme-starry"]
    nothing = erin.npm("stars", "nobody-here")
    assert nothing.stdout.strip() == "" and "has not starred any packages" in nothing.stderr


def test_profile_email_and_password(server: Server, tmp_path_factory: pytest.TempPathFactory) -> None:
    dave = Cli(tmp_path_factory.mktemp("dave"), server.url)
    dave.npmrc.write_text(f"registry={server.url}/\n")
    login(dave, "dave", "dave-password")
    got = json.loads(dave.npm("profile", "get", "--json").stdout)
    assert (got["name"], got["email"], got["tfa"]) == ("dave", "dave@example.com", False)
    assert "Set email to dave@elsewhere.example" in dave.npm("profile", "set", "email", "dave@elsewhere.example").stdout
    assert "dave@elsewhere.example" in dave.npm("profile", "get").stdout
    assert "not kept" in dave.npm("profile", "set", "fullname", "Dave D", check=False).stderr

    # `npm profile set password` asks at a TTY: the current password, then the new one twice.
    child = pexpect.spawn(shutil.which("npm") or "npm", ["profile", "set", "password"],
                          env=dave.env(), cwd=str(dave.home), encoding="utf-8", timeout=30)
    for prompt, answer in (("Current password:", "dave-password"), ("New password:", "dave-new-password"),
                           ("Again:", "dave-new-password")):
        child.expect(prompt)
        child.sendline(answer)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    # The new password logs in from a fresh machine; the token in use kept working.
    assert dave.npm("whoami").stdout.strip() == "dave"
    elsewhere = Cli(tmp_path_factory.mktemp("dave2"), server.url)
    elsewhere.npmrc.write_text(f"registry={server.url}/\n")
    login(elsewhere, "dave", "dave-new-password")


def test_npm_access_lists_and_refuses_per_package_changes(alice: Cli, tmp_path: Path) -> None:
    alice.npm("publish", cwd=make_package(tmp_path / "acc", "@acme/accessible", "1.0.0"))
    collaborators = json.loads(alice.npm("access", "list", "collaborators", "@acme/accessible", "--json").stdout)
    assert collaborators == {"alice": "read-write"}
    mine = json.loads(alice.npm("access", "list", "packages", "--json").stdout)  # whoami, then npm's org fallback
    assert mine.get("@acme/accessible") == "read-write"
    assert "public" in alice.npm("access", "get", "status", "@acme/accessible").stdout
    refused = alice.npm("access", "set", "status=private", "@acme/accessible", check=False)
    assert refused.returncode != 0 and "[[packages]]" in refused.stderr
