// The page `meshdit serve` shows at /: plain HTML, CSS and JavaScript in one string, so the binary needs no
// files beside it and users no build step. It drives the jobs API: POST /v1/jobs, then the job's event
// stream for progress, ETA and previews, DELETE to cancel, and GET /v1/models for the defaults.
#include "app/serve.h"

namespace meshdit {

const char* serve_page_html() {
  return R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshdit</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f6; color: #222; }
  header { background: #233; color: #fff; padding: 10px 20px; font-size: 18px; }
  header small { color: #9bb; margin-left: 10px; }
  main { display: flex; flex-wrap: wrap; gap: 20px; padding: 20px; }
  form { background: #fff; padding: 16px; border-radius: 8px; width: 340px; box-shadow: 0 1px 3px #0002; }
  label { display: block; margin: 8px 0 2px; font-size: 13px; color: #555; }
  textarea, input { width: 100%; box-sizing: border-box; padding: 6px; font: inherit; }
  .row { display: flex; gap: 8px; } .row > div { flex: 1; }
  button { margin-top: 12px; padding: 8px 16px; font: inherit; border: 0; border-radius: 4px; cursor: pointer; }
  #generate { background: #2a7; color: #fff; } #cancel { background: #c44; color: #fff; }
  button:disabled { opacity: 0.5; cursor: default; }
  #status { flex: 1; min-width: 300px; background: #fff; padding: 16px; border-radius: 8px; box-shadow: 0 1px 3px #0002; }
  #bar { height: 14px; background: #ddd; border-radius: 7px; overflow: hidden; margin: 8px 0; }
  #fill { height: 100%; width: 0; background: #2a7; transition: width 0.2s; }
  #preview { width: 256px; height: 256px; image-rendering: pixelated; background: #eee; display: block; }
  #error { color: #b00; white-space: pre-wrap; margin-top: 8px; }
  #gallery { display: flex; flex-wrap: wrap; gap: 12px; padding: 0 20px 20px; }
  figure { margin: 0; background: #fff; padding: 8px; border-radius: 8px; box-shadow: 0 1px 3px #0002; max-width: 280px; }
  figure img, figure video { width: 256px; display: block; }
  figcaption { font-size: 12px; color: #555; margin-top: 4px; word-break: break-word; }
</style>
</head>
<body>
<header>meshdit <small id="model">loading...</small></header>
<main>
<form id="form" onsubmit="return false">
  <label for="prompt">Prompt</label>
  <textarea id="prompt" rows="3">a large red circle in the center on a blue background</textarea>
  <label for="negative">Negative prompt</label>
  <input id="negative" placeholder="(none)">
  <div class="row">
    <div><label for="width">Width</label><input id="width" type="number" step="16" min="16"></div>
    <div><label for="height">Height</label><input id="height" type="number" step="16" min="16"></div>
  </div>
  <div class="row">
    <div><label for="steps">Steps</label><input id="steps" type="number" min="1"></div>
    <div><label for="guidance">Guidance</label><input id="guidance" type="number" step="0.1" placeholder="default"></div>
  </div>
  <label for="seed">Seed (-1: random)</label>
  <input id="seed" type="number" value="-1">
  <label for="apikey">API key (if the server needs one)</label>
  <input id="apikey" type="password" autocomplete="off">
  <button id="generate" type="button">Generate</button>
  <button id="cancel" type="button" disabled>Cancel</button>
</form>
<div id="status">
  <div id="state">Idle.</div>
  <div id="bar"><div id="fill"></div></div>
  <div id="eta"></div>
  <img id="preview" alt="preview">
  <div id="error"></div>
</div>
</main>
<div id="gallery"></div>
<script>
const $ = (id) => document.getElementById(id);
let job = null, events = null;

function headers() {
  const h = { 'Content-Type': 'application/json' };
  const key = $('apikey').value.trim();
  if (key) h['Authorization'] = 'Bearer ' + key;
  return h;
}

function showError(msg) { $('error').textContent = msg; }

async function readError(res) {
  try {
    const j = await res.json();
    if (j.error) return j.error.message;
  } catch (e) {}
  return 'HTTP ' + res.status;
}

async function loadModel() {
  try {
    const res = await fetch('/v1/models', { headers: headers() });
    if (!res.ok) { $('model').textContent = 'model info: ' + await readError(res); return; }
    const m = (await res.json()).data[0];
    $('model').textContent = m.id + ' (' + m.pipeline + ')';
    $('width').value = m.defaults.width; $('height').value = m.defaults.height; $('steps').value = m.defaults.steps;
    if (m.defaults.guidance !== undefined) $('guidance').placeholder = 'default ' + m.defaults.guidance;
  } catch (e) { $('model').textContent = 'server unreachable'; }
}

function setRunning(on) { $('generate').disabled = on; $('cancel').disabled = !on; }

function progress(j) {
  const pct = j.steps > 0 ? Math.round(100 * j.step / j.steps) : 0;
  $('fill').style.width = pct + '%';
  $('state').textContent = j.state === 'queued' ? 'Queued (' + (j.queue_position || 0) + ' ahead)'
                                               : j.state + ': step ' + j.step + ' / ' + j.steps;
  $('eta').textContent = j.eta_s !== null && j.eta_s !== undefined && j.state === 'running'
      ? 'ETA ' + j.eta_s.toFixed(1) + ' s (elapsed ' + j.elapsed_s.toFixed(1) + ' s)' : '';
  if (j.preview) $('preview').src = 'data:image/png;base64,' + j.preview.b64_png;
}

function finish(j) {
  if (events) { events.close(); events = null; }
  setRunning(false);
  job = null;
  progress(j);
  if (j.state === 'done') {
    $('fill').style.width = '100%';
    $('state').textContent = 'Done in ' + j.elapsed_s.toFixed(1) + ' s.';
    for (const im of j.images || []) {
      const fig = document.createElement('figure');
      const video = im.mime_type === 'video/mp4';
      const img = document.createElement(video ? 'video' : 'img');
      img.src = 'data:' + (im.mime_type || 'image/png') + ';base64,' + im.b64_json;
      if (video) { img.controls = img.loop = img.muted = img.autoplay = true; } else { $('preview').src = img.src; }
      const r = j.request;
      const cap = document.createElement('figcaption');
      cap.textContent = r.prompt + ' | ' + r.width + 'x' + r.height + ', ' + r.steps + ' steps, seed ' + r.seed +
          (r.guidance !== undefined ? ', guidance ' + r.guidance : '') +
          (r.negative_prompt ? ' | not: ' + r.negative_prompt : '');
      fig.appendChild(img); fig.appendChild(cap);
      $('gallery').prepend(fig);
    }
  } else {
    $('state').textContent = j.state === 'cancelled' ? 'Cancelled.' : 'Failed.';
    if (j.error) showError(j.error);
  }
}

async function generate() {
  showError('');
  const body = { prompt: $('prompt').value, n: 1 };
  if ($('negative').value) body.negative_prompt = $('negative').value;
  if ($('width').value || $('height').value) body.size = $('width').value + 'x' + $('height').value;
  if ($('steps').value) body.steps = Number($('steps').value);
  if ($('guidance').value) body.guidance = Number($('guidance').value);
  if ($('seed').value !== '') body.seed = Number($('seed').value);
  setRunning(true);
  $('fill').style.width = '0';
  $('state').textContent = 'Submitting...';
  let res;
  try {
    res = await fetch('/v1/jobs', { method: 'POST', headers: headers(), body: JSON.stringify(body) });
  } catch (e) { setRunning(false); showError('server unreachable: ' + e); return; }
  if (!res.ok) { setRunning(false); $('state').textContent = 'Refused.'; showError(await readError(res)); return; }
  job = await res.json();
  progress(job);
  follow(job.id);
}

// EventSource cannot send headers: with an API key the job is polled instead.
function follow(id) {
  if (!$('apikey').value.trim()) {
    events = new EventSource('/v1/jobs/' + id + '/events');
    events.addEventListener('progress', (e) => progress(JSON.parse(e.data)));
    events.addEventListener('done', (e) => finish(JSON.parse(e.data)));
    events.onerror = () => { if (job) { events.close(); events = null; poll(id); } };
  } else {
    poll(id);
  }
}

async function poll(id) {
  while (job && job.id === id) {
    const res = await fetch('/v1/jobs/' + id, { headers: headers() });
    if (!res.ok) { setRunning(false); showError(await readError(res)); job = null; return; }
    const j = await res.json();
    if (['done', 'failed', 'cancelled'].includes(j.state)) { finish(j); return; }
    progress(j);
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function cancel() {
  if (!job) return;
  const res = await fetch('/v1/jobs/' + job.id, { method: 'DELETE', headers: headers() });
  if (!res.ok) showError(await readError(res));
}

$('generate').onclick = generate;
$('cancel').onclick = cancel;
loadModel();
</script>
</body>
</html>
)HTML";
}

}  // namespace meshdit
