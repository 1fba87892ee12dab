// Deleting an account in Debian's chromium: from Your data, a page that says what goes at once,
// what is erased by when and what is kept, a fresh emailed code; then the account is deleted,
// Your data shows when the rest is erased, and its other pages say it is deleted.
// tests/dashboard_billing.rs runs this after the top-up journey and follows the erasure to its
// receipts.
//
// Before that, the account's name is corrected (rectification).
//
// Environment: DASHBOARD_URL, MAILDIR, OUT (screenshots), OWNER, TENANT, CODES (code messages
// the owner was sent before this journey), RENAME (the account's corrected name).
import { check, code, env, launch, phone, screenshots, signIn, sleep } from "./common.mjs";

const [url, maildir, out] = [env("DASHBOARD_URL"), env("MAILDIR"), env("OUT")];
const [owner, tenant, codes] = [env("OWNER"), env("TENANT"), Number(env("CODES"))];
const screenshot = screenshots(out);
const browser = await launch();
const result = {};
try {
  const { page, problems } = await phone(browser);
  await signIn(page, url, maildir, owner, codes);
  // First a correction: the account's name, refused beside the field when empty, then saved.
  await page.goto(`${url}/t/${tenant}/data`);
  await page.getByRole("link", { name: "Correct your details…" }).click();
  const accountName = page.getByLabel("Account name");
  await accountName.fill(" ");
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator("#display_name-error").getByText("Give the account a name.").waitFor();
  await page.getByLabel("Account name").fill(env("RENAME"));
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("Saved.").waitFor();
  check((await page.getByLabel("Account name").inputValue()) === env("RENAME"), "the new name is shown");
  await screenshot(page, "details-saved");

  await page.goto(`${url}/t/${tenant}/data`);
  await page.getByRole("link", { name: "Delete your account…" }).click();
  await page.getByRole("heading", { name: "Delete your account?" }).waitFor();
  const facts = page.locator("#what-happens");
  for (const term of ["At once", "Erased", "Kept", "Before you go"]) {
    await facts.getByText(term, { exact: true }).waitFor();
  }
  result.facts = await facts.innerText();
  await screenshot(page, "delete-account-asked");

  // A wrong code is refused beside the field, and nothing is deleted.
  await page.getByRole("button", { name: "Email me a confirmation code" }).click();
  const field = page.getByLabel("Confirmation code");
  await field.fill("000000");
  const confirm = page.getByRole("button", { name: "Delete my account and its data" });
  await confirm.click();
  await page.locator("#code-error").waitFor();
  result.wrong_code = await page.locator("#code-error").innerText();
  await screenshot(page, "delete-account-wrong-code");

  await page.getByLabel("Confirmation code").fill(await code(maildir, owner, codes + 1));
  await page.getByRole("button", { name: "Delete my account and its data" }).click();
  await page.getByRole("heading", { name: "Your account is deleted" }).waitFor();
  result.erase_by = await page.locator("[role=status] strong").first().innerText();
  await screenshot(page, "delete-account-done");

  // Your data says when the rest goes; the delete link is gone, and asking again is refused.
  await page.getByRole("link", { name: "Follow it on Your data" }).click();
  await page.waitForLoadState();
  // The date is the operator's (its status), written a moment after the deletion: until then
  // the page says "at the end of its account-data window", and a reload shows the date.
  const banner = page.getByText(`This account is deleted. Everything left is erased at ${result.erase_by}.`);
  for (let i = 0; i < 60 && !(await banner.count()); i++) {
    await sleep(500);
    await page.reload();
  }
  await screenshot(page, "delete-account-data");
  await banner.waitFor();
  check(!(await page.locator("#delete-account").count()), "no delete link once deleted");
  const again = await page.goto(`${url}/t/${tenant}/delete`);
  result.again = again.status();
  // The account's other pages say it is deleted (410) and point to Your data, as the list does.
  const instances = await page.goto(`${url}/t/${tenant}`);
  result.instances = instances.status();
  await page.getByRole("heading", { name: "This account is deleted" }).waitFor();
  await page.goto(url);
  await page.locator(".card", { hasText: `Deleted. Everything left is erased at ${result.erase_by}.` })
    .getByRole("link", { name: "Your data" }).waitFor();
  await screenshot(page, "delete-account-list");
  check(problems.length === 0, `the pages ran without errors: ${problems.join("; ")}`);
  result.ok = true;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
