// Headless Chromium for the tests and speed figures: the browser named by $CHROMIUM, with nothing that
// reaches beyond this machine (no background networking, updates or sync).
import { chromium } from "playwright-core";

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run"],
  });
}
