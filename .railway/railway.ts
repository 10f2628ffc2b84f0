// wacast on Railway, as infrastructure as code (Railway's replacement for
// railway.json / railway.toml): a PostgreSQL and a Redis, and one service per
// daemon built from the repository's root Dockerfile. Each service's start
// command replaces the image's entrypoint without a shell, so it is the
// entrypoint itself with the role ("wacast scheduler"). Secrets are shared
// variables set in Railway (referenced here by name, never valued here).
// `railway config plan` shows what would change; `railway config apply` does it.
// tests/deploy/check.sh type-checks and evaluates this file.
import { defineRailway, github, postgres, project, redis, service } from "railway/iac";

// The repository Railway builds from (its root Dockerfile): set to your fork.
const REPO = "wacast/wacast";

export default defineRailway((ctx) => {
  const db = postgres("postgres");
  const cache = redis("redis");

  const common = {
    DATABASE_URL: db.env.DATABASE_URL,
    REDIS_URL: cache.env.REDIS_URL,
    WACAST_LOG_FORMAT: "json",
    WACAST_SECRET_KEY: ctx.shared.WACAST_SECRET_KEY,
    WACAST_SECRET_KEY_PREVIOUS: ctx.shared.WACAST_SECRET_KEY_PREVIOUS,
  };
  const build = { builder: "DOCKERFILE" as const, dockerfilePath: "Dockerfile" };
  const source = github(REPO, { branch: "main" });

  const scheduler = service("wacast-scheduler", {
    source,
    build,
    // The release step; the daemons would also migrate at start (advisory lock).
    preDeploy: "wacast migrate",
    start: "wacast scheduler",
    healthcheck: "/healthz",
    env: { ...common },
  });

  const dispatcher = service("wacast-dispatcher", {
    source,
    build,
    start: "wacast dispatcher",
    healthcheck: "/healthz",
    // The providers' webhooks arrive on PORT (set by Railway): give this
    // service a public domain in Railway (Settings, Networking).
    env: {
      ...common,
      WACAST_ADMIN_TOKEN: ctx.shared.WACAST_ADMIN_TOKEN,
      WACAST_META_APP_SECRET: ctx.shared.WACAST_META_APP_SECRET,
      WACAST_META_VERIFY_TOKEN: ctx.shared.WACAST_META_VERIFY_TOKEN,
      WACAST_GOWA_WEBHOOK_SECRET: ctx.shared.WACAST_GOWA_WEBHOOK_SECRET,
    },
  });

  const sender = service("wacast-sender", {
    source,
    build,
    start: "wacast sender",
    healthcheck: "/healthz",
    replicas: 2,
    // Railway waits this long between SIGTERM and SIGKILL: longer than the
    // sender's stop time-out, so in-flight sends end and leases are released.
    deploy: { drainingSeconds: 30 },
    env: { ...common, WACAST_STOP_TIMEOUT_MS: "10000" },
  });

  return project("wacast", { resources: [db, cache, scheduler, dispatcher, sender] });
});
