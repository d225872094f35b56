import assert from "node:assert/strict";
import { recorderChoices, timelineSeries } from "../../web/recorder_pane.js";

Deno.test("recorderChoices(): outgoing migrations only, in the API's order, labelled by time, outcome and URI", () => {
  const choices = recorderChoices([
    { id: "b", direction: "outgoing", status: "completed", uri: "tcp:h:2", started_at: 0 },
    { id: "x", direction: "incoming", status: "completed", started_at: 0 },
    { id: "a", direction: "outgoing", status: "cancelled", uri: "tcp:h:1", started_at: 0 },
  ]);
  assert.deepEqual(choices.map((c: { id: string }) => c.id), ["b", "a"]);
  assert.match(choices[0].label, /^\d\d:\d\d:\d\d completed tcp:h:2$/);
  assert.deepEqual(recorderChoices(undefined), []);
});

Deno.test("timelineSeries(): each window's bandwidth and dirty rate over its time in seconds", () => {
  const series = timelineSeries({
    windows: [
      { t: 100, bandwidth: 10e6, dirty_rate: 0 },
      { t: 200, bandwidth: 11e6, dirty_rate: 2e6 },
    ],
  });
  assert.deepEqual(series, {
    bandwidth: [{ t: 0.1, v: 10e6 }, { t: 0.2, v: 11e6 }],
    dirty: [{ t: 0.1, v: 0 }, { t: 0.2, v: 2e6 }],
  });
  assert.deepEqual(timelineSeries(null), { bandwidth: [], dirty: [] });
});
