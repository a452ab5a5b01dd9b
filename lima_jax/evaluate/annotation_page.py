"""The annotation page (HTML, CSS and script in one string, so it installs with the package)
that `annotate` serves: prompt, two responses, three buttons, keys 1 / 2 / 3, progress."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>LIMA pairwise annotation</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; }
  #prompt, .response { white-space: pre-wrap; border: 1px solid #ccc; border-radius: 6px; padding: .8em; }
  #prompt { background: #f5f5f5; }
  .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin: 1em 0; }
  .buttons { display: flex; gap: 1em; justify-content: center; position: sticky; bottom: 0;
             background: white; padding: .8em 0; }
  button { font-size: 1.05em; padding: .5em 1.2em; }
  kbd { border: 1px solid #999; border-radius: 3px; padding: 0 .3em; font-size: .85em; }
  #error { color: #b00; }
</style>
</head>
<body>
<h2>Which response is better? <small id="progress"></small></h2>
<div id="study">
  <h3>Prompt</h3>
  <div id="prompt"></div>
  <div class="pair">
    <div><h3>Response 1</h3><div class="response" id="left"></div></div>
    <div><h3>Response 2</h3><div class="response" id="right"></div></div>
  </div>
  <div class="buttons">
    <button id="btn-left" data-choice="left">Response 1 is better <kbd>1</kbd></button>
    <button id="btn-tie" data-choice="tie">Tie <kbd>2</kbd></button>
    <button id="btn-right" data-choice="right">Response 2 is better <kbd>3</kbd></button>
  </div>
</div>
<p id="done" hidden>All pairs are judged. Thank you! Your verdicts are saved.</p>
<p id="error"></p>
<script>
let current = null, busy = false;
function show(state) {
  document.getElementById("progress").textContent = `(${state.done} / ${state.total} judged)`;
  current = state.item;
  document.getElementById("study").hidden = !current;
  document.getElementById("done").hidden = !!current;
  if (current) {  // textContent, never innerHTML: responses are untrusted text
    document.getElementById("prompt").textContent = current.prompt;
    document.getElementById("left").textContent = current.left;
    document.getElementById("right").textContent = current.right;
    window.scrollTo(0, 0);
  }
}
async function call(path, body) {
  const response = await fetch(path, body ? {method: "POST", body: JSON.stringify(body),
                                             headers: {"Content-Type": "application/json"}} : {});
  if (!response.ok) throw new Error(await response.text());
  return response.json();
}
async function choose(choice) {
  if (!current || busy) return;
  busy = true;
  document.querySelectorAll("button").forEach(b => b.disabled = true);
  try {
    show(await call("/api/verdict", {id: current.id, choice: choice}));
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "Not saved: " + e.message;
  } finally {
    busy = false;
    document.querySelectorAll("button").forEach(b => b.disabled = false);
  }
}
document.querySelectorAll("button").forEach(b => b.addEventListener("click", () => choose(b.dataset.choice)));
document.addEventListener("keydown", e => {
  const choice = {"1": "left", "ArrowLeft": "left", "2": "tie", "t": "tie", "3": "right", "ArrowRight": "right"}[e.key];
  if (choice) { e.preventDefault(); choose(choice); }
});
call("/api/state").then(show).catch(e => document.getElementById("error").textContent = e.message);
</script>
</body>
</html>
"""
