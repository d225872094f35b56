/**
 * GET /metrics: Prometheus's text format, through prom-client (docs/ARCHITECTURE.md,
 * "Metrics"). The gauges of the migration running now use KubeVirt's names where
 * KubeVirt has one; counters of migrations by direction and outcome, and
 * histograms of downtime and total time, count from this process's start. The
 * route sits behind the same host, origin and token checks as every other. The
 * counters take each finished migration from the engine's history.
 * @module
 */
import { createRoute, z } from "@hono/zod-openapi";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Engine } from "../engine/engine.ts";
import { newRouter } from "./router.ts";

/** Histogram buckets of the downtime, seconds: 1 ms to 10 s. */
export const DOWNTIME_BUCKETS = [0.001, 0.005, 0.01, 0.03, 0.05, 0.1, 0.3, 1, 3, 10];
/** Histogram buckets of a migration's total time, seconds: 100 ms to an hour. */
export const TOTAL_TIME_BUCKETS = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600];

/** A prom-client registry over one engine: gauges read at each scrape, counters fed by its history. */
export function migrationMetrics(engine: Engine): { registry: Registry; close(): void } {
  const registry = new Registry();
  const registers = [registry];
  const ram = () => {
    const info = engine.current();
    return info.status === "none" || !engine.migration?.isActive ? undefined : info.ram;
  };
  const gauge = (name: string, help: string, read: () => number | undefined) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read() ?? 0);
      },
    });
  gauge(
    "kubevirt_vmi_migration_data_processed_bytes",
    "RAM bytes the running outgoing migration has sent (0 when none runs)",
    () => ram()?.transferred,
  );
  gauge(
    "kubevirt_vmi_migration_data_remaining_bytes",
    "RAM bytes the running outgoing migration has left to send",
    () => ram()?.remaining,
  );
  gauge(
    "kubevirt_vmi_migration_data_total_bytes",
    "RAM bytes the running outgoing migration moves in all",
    () => ram()?.total,
  );
  gauge(
    "kubevirt_vmi_migration_dirty_memory_rate_bytes",
    "Bytes per second the guest dirties during the running outgoing migration",
    () => {
      const r = ram();
      return r ? r.dirty_pages_rate * r.page_size : undefined;
    },
  );
  gauge(
    "kubevirt_vmi_migration_memory_transfer_rate_bytes",
    "Bytes per second the running outgoing migration sends (its bandwidth estimate)",
    () => {
      const r = ram();
      return r ? r.mbps * 1e6 / 8 : undefined;
    },
  );
  gauge(
    "kubevirt_vmi_migrations_in_running_phase",
    "Outgoing migrations running now (0 or 1)",
    () => engine.migration?.isActive ? 1 : 0,
  );
  gauge(
    "ferry_migration_expected_downtime_seconds",
    "The running outgoing migration's expected downtime (0 when none runs or unknown)",
    () => {
      const ms = engine.migration?.isActive ? engine.current().expected_downtime : undefined;
      return ms !== undefined && ms >= 0 ? ms / 1000 : undefined;
    },
  );
  gauge(
    "ferry_migration_cpu_throttle_percent",
    "auto-converge's vCPU throttle in the running outgoing migration",
    () => engine.migration?.isActive ? engine.current().cpu_throttle_percentage : undefined,
  );
  gauge(
    "ferry_migration_dirty_sync_count",
    "Dirty-log passes of the running outgoing migration",
    () => ram()?.dirty_sync_count,
  );
  gauge(
    "ferry_incoming_bytes_received",
    "Bytes the running incoming migration has received (0 when none runs)",
    () => {
      const info = engine.incomingInfo();
      return info.status === "active" ? info.bytes_received : undefined;
    },
  );
  const outcomes = new Counter({
    name: "ferry_migrations_total",
    help: "Finished migrations by direction and outcome (completed, failed, cancelled)",
    labelNames: ["direction", "outcome"],
    registers,
  });
  const succeeded = new Counter({
    name: "kubevirt_vmi_migration_succeeded",
    help: "Outgoing migrations that completed",
    registers,
  });
  const failed = new Counter({
    name: "kubevirt_vmi_migration_failed",
    help: "Outgoing migrations that failed",
    registers,
  });
  const downtime = new Histogram({
    name: "ferry_migration_downtime_seconds",
    help: "Downtime of completed outgoing migrations",
    buckets: DOWNTIME_BUCKETS,
    registers,
  });
  const totalTime = new Histogram({
    name: "ferry_migration_total_time_seconds",
    help: "Total time of finished migrations, by direction",
    labelNames: ["direction"],
    buckets: TOTAL_TIME_BUCKETS,
    registers,
  });
  // Zero series from the start, so a rate() sees the first migration.
  for (const direction of ["outgoing", "incoming"]) {
    for (const outcome of ["completed", "failed", "cancelled"]) {
      outcomes.inc({ direction, outcome }, 0);
    }
  }
  // Every finished migration reaches the history once: count it there.
  const close = engine.history.subscribe((r) => {
    const outcome = r.status;
    if (outcome !== "completed" && outcome !== "failed" && outcome !== "cancelled") return;
    outcomes.inc({ direction: r.direction, outcome });
    if (r.direction === "outgoing") {
      if (outcome === "completed") succeeded.inc();
      if (outcome === "failed") failed.inc();
      if (outcome === "completed" && r.downtime !== undefined) downtime.observe(r.downtime / 1000);
    }
    if (r.total_time !== undefined) {
      totalTime.observe({ direction: r.direction }, r.total_time / 1000);
    }
  });
  return { registry, close };
}

const metrics = createRoute({
  method: "get",
  path: "/metrics",
  summary: "Prometheus metrics: the running migration (KubeVirt's names), counters of " +
    "migrations by outcome, histograms of downtime and total time",
  responses: {
    200: {
      description: "Prometheus text format 0.0.4",
      content: { "text/plain": { schema: z.string() } },
    },
  },
});

/** GET /metrics. */
export function metricsRoutes(deps: { engine: Engine }) {
  // Counting starts with the API (tools/api_doc.ts builds one without an engine, never called).
  const registry = deps.engine ? migrationMetrics(deps.engine).registry : null;
  return newRouter().openapi(metrics, async (c) => {
    if (!registry) throw new Error("GET /metrics needs an engine");
    const text = await registry.metrics();
    return c.text(text, 200, { "content-type": registry.contentType });
  });
}
