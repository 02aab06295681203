// Drives Firefox ESR for tests/test_engines.py: puppeteer-core over WebDriver BiDi, no browser download
// (recipe: shared/notes/browser.md). One JSON command per stdin line, one JSON answer per stdout line:
//   {"cmd": "open", "url": "...", "init": "js"}  -> {"ok": true, "value": <tab id>}; init (optional) runs
//                                            before the page's own scripts, on every document of the tab
//   {"cmd": "eval", "tab": 0, "js": "expr"}  -> {"ok": true, "value": <the expression's JSON value>}
//   {"cmd": "goto", "tab": 0, "url": "..."}  -> {"ok": true}; the tab navigates (its history grows)
//   {"cmd": "back", "tab": 0}                -> {"ok": true}; the tab's back button (a restore from the
//                                            back/forward cache fires no load event: not waited for)
//   {"cmd": "offline", "offline": true}      -> {"ok": true}; network emulation of every open tab (BiDi)
//   {"cmd": "close", "tab": 0}               -> {"ok": true}
//   {"cmd": "errors"}                        -> {"ok": true, "value": [page errors and console errors so far]}
//   {"cmd": "quit"}                          -> {"ok": true}, then the browser closes and we exit
// A failed command answers {"ok": false, "error": "..."}. Usage: node firefox.mjs <firefox binary> <profile home>
import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

const [executablePath, home] = process.argv.slice(2);
// No prefs needed: SharedWorker, module workers, Web Locks and BroadcastChannel are on in Firefox 153 headless
// (dom.workers.sharedWorkers.enabled from shared/notes/browser.md no longer changes anything).
const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath,
  headless: true,
  env: { ...process.env, HOME: home },
});
const tabs = [];
const errors = [];

const commands = {
  async open({ url, init }) {
    const page = await browser.newPage();
    if (init) await page.evaluateOnNewDocument(init);
    const tab = tabs.length;
    page.on("pageerror", (e) => errors.push(`tab ${tab}: ${e?.message ?? e}`));
    page.on("console", (m) => m.type() === "error" && errors.push(`tab ${tab} console: ${m.text()}`));
    await page.goto(url);
    tabs.push(page);
    return tabs.length - 1;
  },
  async eval({ tab, js }) {
    return await tabs[tab].evaluate(js);
  },
  async goto({ tab, url }) {
    await tabs[tab].goto(url);
  },
  async back({ tab }) {
    await tabs[tab].goBack({ waitUntil: "domcontentloaded", timeout: 5_000 }).catch(() => null);
  },
  async offline({ offline }) {
    for (const page of tabs) if (page) await page.setOfflineMode(offline);
  },
  async close({ tab }) {
    await tabs[tab].close();
    tabs[tab] = null;
  },
  async errors() {
    return errors;
  },
  async quit() {
    await browser.close();
  },
};

const answer = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
answer({ ok: true, value: await browser.version() });
for await (const line of createInterface({ input: process.stdin })) {
  const command = JSON.parse(line);
  try {
    answer({ ok: true, value: (await commands[command.cmd](command)) ?? null });
  } catch (e) {
    answer({ ok: false, error: String(e?.stack ?? e) });
  }
  if (command.cmd === "quit") break;
}
await browser.close().catch(() => {});
process.exit(0);
