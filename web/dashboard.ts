/** Loads the dashboard page served at GET / (web/index.html), or undefined when absent. */
export async function loadDashboard(): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(new URL("./index.html", import.meta.url));
  } catch {
    return undefined;
  }
}
