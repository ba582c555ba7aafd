// web_ui_driver.mjs: a headless Chromium for tests/integration/test_web_ui.py,
// driven through Playwright (playwright-core from npm, Debian's
// /usr/bin/chromium). The Python test sends one JSON command a line on stdin;
// each gets one JSON line on stdout: {"ok": true, "result": ...} or
// {"ok": false, "error": "..."}. The test keeps the scenario; this file only
// knows how to act on a page.
//
//   CCM_PLAYWRIGHT_DIR   the directory whose node_modules holds playwright-core
//   CCM_CHROMIUM         the browser (default /usr/bin/chromium)

import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const dir = process.env.CCM_PLAYWRIGHT_DIR;
if (!dir) {
  console.log(JSON.stringify({ ok: false, error: "CCM_PLAYWRIGHT_DIR is not set" }));
  process.exit(2);
}
const require = createRequire(path.join(dir, "node_modules", "x.js"));
const { chromium } = require("playwright-core");

let browser = null;
let context = null;
let page = null;
const problems = [];   // page errors, console errors (a CSP violation is one)

async function waitFor(args) {
  const { selector, text, count = 1, timeout = 15000, attr, value } = args;
  await page.waitForFunction(
    ({ selector, text, count, attr, value }) => {
      const els = [...document.querySelectorAll(selector)];
      const match = els.filter((el) =>
        (text === undefined || el.textContent.includes(text))
        && (attr === undefined || el.getAttribute(attr) === value));
      return match.length >= count;
    },
    { selector, text, count, attr, value }, { timeout, polling: 100 });
  return true;
}

const ops = {
  async launch({ width = 1280, height = 900, mobile = false }) {
    browser = await chromium.launch({
      executablePath: process.env.CCM_CHROMIUM || "/usr/bin/chromium",
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    });
    context = await browser.newContext({ viewport: { width, height }, isMobile: mobile,
                                         hasTouch: mobile });
    page = await context.newPage();
    page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(`console: ${m.text()}`);
    });
    page.on("dialog", (d) => d.accept());
    return browser.version();
  },
  async goto({ url }) {
    await page.goto(url, { waitUntil: "load" });
    return page.url();
  },
  async hash({ hash }) {
    await page.evaluate((h) => { location.hash = h; }, hash);
    return true;
  },
  async reload() {
    await page.reload({ waitUntil: "load" });
    return true;
  },
  async click({ selector, text }) {
    const loc = text ? page.locator(selector, { hasText: text }).first() : page.locator(selector).first();
    await loc.click({ timeout: 15000 });
    return true;
  },
  async fill({ selector, value }) {
    await page.locator(selector).first().fill(value, { timeout: 15000 });
    return true;
  },
  async select({ selector, value }) {
    await page.locator(selector).first().selectOption(value, { timeout: 15000 });
    return true;
  },
  wait: waitFor,
  async texts({ selector, attr }) {
    return page.$$eval(selector, (els, attr) =>
      els.map((el) => (attr ? el.getAttribute(attr) : el.textContent)), attr);
  },
  async eval({ expr }) {
    return page.evaluate(expr);
  },
  async viewport({ width, height }) {
    await page.setViewportSize({ width, height });
    return true;
  },
  async screenshot({ file, fullPage = true }) {
    await page.screenshot({ path: file, fullPage });
    return file;
  },
  async problems() {
    return problems.splice(0);
  },
  async close() {
    if (browser) await browser.close();
    browser = null;
    return true;
  },
};

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  let reply;
  try {
    const cmd = JSON.parse(line);
    const fn = ops[cmd.op];
    if (!fn) throw new Error(`unknown op ${cmd.op}`);
    reply = { ok: true, result: await fn(cmd) };
  } catch (e) {
    reply = { ok: false, error: String(e && e.message ? e.message : e) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
}
if (browser) await browser.close();
