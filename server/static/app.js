// The vmem page: upload an image, show the prediction and the neighbours that voted, forget or relabel one.
// Plain JS against the JSON API; every URL it builds is relative so the page also works under a path
// prefix. URLs the server hands back (`thumbnail_url`) already carry the prefix: they are used as given.
"use strict";

const $ = (id) => document.getElementById(id);
let currentFile = null;
// A label is data: one named "__proto__", "constructor" or "toString" read the object's prototype from a plain
// object ("[object Object]" as its name, and a TypeError that emptied the label filter). Maps by label are built
// without one.
const byLabel = (o) => Object.assign(Object.create(null), o || {});
let perLabel = byLabel(); // points per label, from the last stats
let labelsByPoints = []; // its labels, most points first (a JS object lists integer-like keys first: "7" before all)
let labelNames = byLabel(); // label -> name, from the last stats
// label -> its `few_points` entry, from the last stats: too few points to win the default vote against a fuller label
// near it, even as a query's nearest neighbours (README, "A class of a few images")
let fewPoints = byLabel();
let labelShown = null; // {label, name, cursor}: the label whose memory points are listed
let maxUploadBytes = null; // the service's request body limit, from the last stats (null before them)

// What a status means when the answer is not the service's own (a proxy's HTML page, e.g. nginx's defaults).
const PROXY_STATUS = {
  413: "the upload is larger than a proxy in front of the service accepts (its client_max_body_size): " +
    "choose a smaller image, or ask whoever runs the service to raise that limit",
  502: "the service did not answer the proxy in front of it: it may be stopped or restarting; try again shortly",
  503: "the service is not available right now; try again shortly",
  504: "a proxy in front of the service gave up waiting for its answer (its proxy_read_timeout); " +
    "try again, or without re-ranking",
};

const UNKNOWN_LABEL = "urn:vmem:problem:unknown-label"; // a `why_not` label refused (server/problems.py's type)
// A key sent and refused (server/deps.py): not one the service knows, or one that may not do what was asked
const INVALID_KEY = "urn:vmem:problem:invalid-api-key";
const KEY_REFUSED = [INVALID_KEY, "urn:vmem:problem:key-not-allowed"];

// A problem's `type`, read from a copy: its text is read after.
async function problemType(resp) {
  try {
    return (await resp.clone().json()).type || "";
  } catch {
    return "";
  }
}

async function problemText(resp) {
  // Errors are RFC 9457 problem details: show `detail`, else the title, else what the status means. Read from a
  // copy: its type is read after (keyRefused).
  const fallback = PROXY_STATUS[resp.status]
    ? `${PROXY_STATUS[resp.status]} (HTTP ${resp.status})` : `HTTP ${resp.status}`;
  try {
    const body = await resp.clone().json();
    return body.detail || body.title || fallback;
  } catch {
    return fallback;
  }
}

// Smooth scrolling, unless the reader asked for less motion.
function scrollBehavior() {
  return window.matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth";
}

// One sentence for a screen reader (the answer is drawn where sighted users look; nothing else says it).
function announce(text) {
  $("announce").textContent = text;
}

// Whether the error shown is about the options chosen (no key to re-rank with): the only one that going back to
// the answer's options takes away. Any other error (a relabel refused) stays until the next request clears it.
let optionsErrorShown = false;

// `message`: text, or a sentence's parts (text and nodes: a label isolated by namedNodes or bdi).
function showError(message) {
  optionsErrorShown = false;
  const parts = sentenceParts(message);
  $("error").replaceChildren(...parts);
  $("error").hidden = !parts.length;
  // An edit made far down the page (a label's list) reports up here: bring it into view.
  if (parts.length) $("error").scrollIntoView({ block: "nearest" });
}

// A sentence as the parts an element is given: none for no text.
function sentenceParts(message) {
  return Array.isArray(message) ? message : message ? [message] : [];
}

// The text a sentence's parts read as.
function textOf(parts) {
  return parts.map((p) => (typeof p === "string" ? p : p.textContent)).join("");
}

// The stats line is no live region (it changes with every edit), so its failure is said aloud too: unheard, a
// screen reader's user went on editing a memory the page could no longer read.
function statsFailed(message) {
  $("stats").textContent = message;
  announce(message);
}

async function loadStats() {
  let resp;
  try {
    resp = await fetch("v1/memory/stats");
  } catch (err) {
    statsFailed(`the service did not answer (${err})`);
    return;
  }
  if (!resp.ok) {
    statsFailed(`memory unavailable: ${await problemText(resp)}`);
    return;
  }
  const s = await resp.json();
  maxUploadBytes = s.max_upload_bytes ?? null;
  perLabel = byLabel(s.per_label);
  labelsByPoints = Object.keys(perLabel).sort((a, b) => perLabel[b] - perLabel[a] || (a < b ? -1 : a > b ? 1 : 0));
  labelNames = byLabel(s.label_names);
  fewPoints = byLabel(Object.fromEntries((s.few_points || []).map((f) => [f.label, f])));
  showFewPoints(s.few_points || [], s.few_points_total || 0);
  listLabels();
  fillLabelOptions();
  teachHint(); // a label typed may have just got its first points, or lost its last
  loadHistory();
  $("stats").textContent = `${plural(s.points, "point")} · ${plural(s.labels, "label")}` +
    (s.few_points_total ? ` (${count(s.few_points_total)} with too few points to win the vote)` : "") +
    ` · ${s.featurizer.name} (${s.backend})`;
  // A Qdrant server rewrites its segments on its own schedule, so the service refuses erase there.
  $("erase").disabled = s.backend !== "embedded";
  $("erase-label").title = $("erase").disabled ? "a memory on a Qdrant server is rewritten when the server decides" : "";
  showReadOnly(s.read_only);
}

// Above the labels' list: which labels the default vote seldom answers, and what to do (the list marks them).
function showFewPoints(few, total) {
  const note = $("few-points-note");
  note.hidden = total === 0;
  if (total === 0) note.textContent = "";
  else if (total === 1) {
    const f = few[0];
    note.replaceChildren(...namedNodes(f.label, labelNames[f.label]), ` has too few points to win the default ` +
      `${f.rule} vote of k = ${f.k} against a fuller label near it (${f.points} of ${f.needed}): add images of it, ` +
      `or classify with k = ${f.k_that_fits} or less.`);
  } else {
    note.textContent = `${count(total)} labels have too few points to win the default ${few[0].rule} vote of k = ` +
      `${few[0].k} against a fuller label near them (marked “too few”): add images of them, or classify with a ` +
      "smaller k.";
  }
}

// A memory served read-only (`vmem serve --read-only`) takes no edit: the page says so, and offers none (each Forget
// and Relabel had been offered, asked its question and then failed). Classify, the labels' points, the audit and
// the history are read as ever, and the key is still the one to re-rank with.
let servedReadOnly = null; // as the last stats said; null before the first
const KEY_USE = "to re-rank with the VLM, or to add, forget or relabel points"; // the key box's, as index.html says
function showReadOnly(readOnly) {
  const turned = readOnly && servedReadOnly === false;
  servedReadOnly = readOnly;
  document.body.classList.toggle("read-only", readOnly);
  const note = !readOnly ? "" : "The memory is served read-only: classify and browse it here; nothing can be added "
    + "to it, and its points cannot be forgotten or relabelled on this service.";
  $("key-use").textContent = readOnly ? "to re-rank with the VLM" : KEY_USE;
  // Turned read-only under an open page (a service restarted so): the keyboard was on an edit's control, gone with
  // it, and goes to what says why (read there: not said by the live region as well).
  const focused = document.activeElement;
  const refocus = turned && (!focused || focused === document.body || !focused.getClientRects().length);
  $("read-only-note").setAttribute("aria-live", refocus ? "off" : "polite");
  if ($("read-only-note").textContent !== note) $("read-only-note").textContent = note; // said again only if new
  if (refocus) $("read-only-note").focus({ preventScroll: true });
}

// An edit's failure, said where errors are. A 503 may be a service restarted read-only since the page was loaded
// (`memory-read-only`): the stats, read again, say so, and the page offers no more edits. `retry`: the edit again,
// offered from the key field where the key was refused.
async function editFailed(message, resp, retry = null) {
  showError(message);
  if (resp && resp.status === 503) await loadStats();
  if (resp && retry) await keyRefused(resp, retry);
}

// A key the service refused (mistyped, revoked, or one that may not do this): the key field is offered again as for
// a key missing (opened, the keyboard in it, the key selected to be typed over), and Enter there carries on with
// `retry`. A key not valid is no longer kept for the tab. Returns whether the key was refused.
async function keyRefused(resp, retry) {
  if (resp.status !== 403 && resp.status !== 401) return false;
  const type = await problemType(resp);
  if (!KEY_REFUSED.includes(type)) return false;
  if (type === INVALID_KEY) sessionStorage.removeItem("vmem-api-key");
  retryWithKey = retry;
  $("key-box").open = true;
  $("api-key").focus();
  $("api-key").select();
  return true;
}

async function loadTemplates() {
  let resp;
  try {
    resp = await fetch("v1/templates");
  } catch {
    return; // the stats line says the service did not answer
  }
  if (!resp.ok) return;
  const body = await resp.json();
  const select = $("template");
  for (const t of body.templates) {
    if (t.name === body.default) {
      // The blank choice is the default: named once, not listed twice.
      select.options[0].textContent = `${t.name} (default)`;
      select.options[0].title = t.description;
      continue;
    }
    const opt = document.createElement("option");
    opt.value = t.name;
    opt.textContent = t.name;
    opt.title = t.description;
    select.appendChild(opt);
  }
  showTemplateErrors(body.errors || {});
}

// Templates that did not load are not in the list: say which, and why, beside it (they had just been missing).
function showTemplateErrors(errors) {
  const note = $("template-errors");
  const broken = Object.entries(errors);
  note.replaceChildren();
  note.hidden = broken.length === 0;
  if (!broken.length) return;
  note.append(`${broken.length === 1 ? "1 template" : `${broken.length} templates`} could not be loaded:`);
  const list = document.createElement("ul");
  for (const [name, why] of broken) {
    const item = document.createElement("li");
    // The service says the reason alone (not its path to the file): the name says which one.
    item.append(name.startsWith("$") ? name : bdi(name), `: ${why}`);
    list.append(item);
  }
  note.append(list);
}

function queryString() {
  const params = new URLSearchParams();
  if ($("k").value) params.set("k", $("k").value);
  if ($("vote").value) params.set("vote", $("vote").value);
  // Judged by the service, as vmem classify judges it (both rounded alike): a cached answer is judged again.
  if ($("min-confidence").value) params.set("min_confidence", $("min-confidence").value);
  if ($("rerank").checked) {
    params.set("rerank", "true");
    if ($("template").value) params.set("template", $("template").value);  // read only when re-ranking
  }
  return params.toString();
}

function chooseFile(file) {
  if (!file) return;
  currentFile = file;
  hideEditNote(); // about an edit made for the image before
  untaught(null); // its add, and its Undo, are the image before's (the label typed stays: a class of several images)
  const preview = $("preview");
  preview.alt = visible(file.name); // named
  const before = preview.src;
  preview.src = URL.createObjectURL(file);
  // The image before's URL let go (once replaced: its load is not failed): each held its file until the tab closed
  if (before.startsWith("blob:")) URL.revokeObjectURL(before);
  preview.hidden = false;
  $("drop-hint").hidden = true; // back, with the file's name, where the browser cannot draw it (noPreview)
  $("file-chosen").textContent = `chosen: ${file.name}`; // the chooser keeps its name; this says what it holds
  $("classify-btn").disabled = false;
  classify();
}

// An image the service reads and a browser may not draw (a TIFF in Chromium), or no image: said in words in the drop
// zone, where a broken image's icon had looked like a failed upload beside the answer.
function noPreview() {
  if (!currentFile) return;
  $("preview").hidden = true;
  $("drop-hint").textContent = `${visible(currentFile.name)}: no preview in this browser`;
  $("drop-hint").hidden = false;
}

// Each classify request's number: only the latest one's answer (or error) is shown, whatever order they end in.
let classifySeq = 0;
let askedFor = null; // the file and options of the latest request

// An option changed: classify again, unless the answer shown (or coming) is already for these options (a number
// field reports a change when it loses focus, typed in before the image was chosen).
// An option's change, classified once it settles: arrow keys through a select or a number field change it at every
// press, and each change was a request (a paid Gemini call when re-ranking).
let optionsTimer = null;
function classifyWhenSettled(delay) {
  clearTimeout(optionsTimer);
  optionsTimer = setTimeout(classifyIfChanged, delay);
}

function classifyIfChanged() {
  if (askedFor && askedFor.file === currentFile && askedFor.options === queryString()) {
    // Back to the options of the answer shown: an error about other options (no key to re-rank) goes. Only that
    // one: a relabel's error shown meanwhile had been cleared by this check, run 600 ms after k was typed.
    if (!askedFor.failed && optionsErrorShown) showError("");
    return;
  }
  classify();
}

function hideAnswer() {
  // An error is about the image or settings now chosen: the answer to an earlier one must not stay under it.
  $("answer").hidden = true;
  $("neighbors-section").hidden = true;
}

// `whyNot`: a label the answer is to say why the vote did not answer (`why_not`); asked once, for the answer on show.
async function classify(whyNot = null) {
  clearTimeout(optionsTimer);
  if (!currentFile) return;
  // An edit of a card this answer redraws is no longer the user's to carry on (Enter in the key field had forgotten
  // a point no longer on show).
  retryWithKey = null;
  // k out of 1..1000, a threshold out of 0..1: said at the field, not sent to be refused
  for (const id of ["k", "min-confidence"]) {
    if (!$(id).reportValidity()) {
      $(id).setAttribute("aria-invalid", "true");
      return;
    }
    $(id).removeAttribute("aria-invalid");
  }
  // Over the service's limit: refused here, as its 413 says it, not sent whole first (a 75 MB photo is seconds of
  // upload, a phone's data, for a one-line refusal)
  if (maxUploadBytes !== null && currentFile.size > maxUploadBytes) {
    ++classifySeq; // an answer on its way for the image before is not shown
    askedFor = { file: currentFile, options: queryString(), failed: true };
    classifySettled();
    hideAnswer();
    announce("");
    showError(tooLarge(currentFile,
      `the request body is over the limit of ${maxUploadBytes.toLocaleString("en")} bytes`));
    return;
  }
  // Re-ranking asks Gemini, paid per call: the service wants the API key for it (plain classifying needs none).
  const headers = {};
  const again = () => { // with the key entered: on from the Classify button, as if it had been pressed
    $("classify-btn").focus();
    classify(whyNot);
  };
  if ($("rerank").checked) {
    const key = apiKeyFor("re-rank with the VLM", again);
    if (!key) {
      optionsErrorShown = true;
      hideAnswer(); // the answer on show is not a re-ranked one
      return;
    }
    headers["X-API-Key"] = key;
  }
  const seq = ++classifySeq;
  const before = askedFor;
  askedFor = { file: currentFile, options: queryString() };
  showError("");
  // aria-disabled, not disabled, while it runs: disabling the button a keyboard user had pressed dropped their focus
  // to the page. The form's submit is refused meanwhile, as the disabled button refused it.
  $("classify-btn").setAttribute("aria-disabled", "true");
  $("classify-btn").textContent = "Classifying…";
  $("answer").classList.add("stale"); // the answer on show is for the image or options before
  $("answer").setAttribute("aria-busy", "true");
  announce("Classifying…");
  $("neighbors-section").classList.add("stale");
  // No answer on show: its place says one is coming (a re-rank takes up to a minute; an answer on show fades instead).
  // Not a live region: "Classifying…" is said once, above.
  $("pending").textContent = `Classifying ${visible(currentFile.name)}…`;
  $("pending").hidden = !$("answer").hidden;
  try {
    const file = currentFile;
    const form = new FormData();
    form.append("image", file, file.name);
    const params = new URLSearchParams(queryString());
    if (whyNot) params.set("why_not", whyNot);
    const resp = await fetch(`v1/classify?${params}`, { method: "POST", body: form, headers });
    const refusedLabel = whyNot && resp.status === 422 && await problemType(resp) === UNKNOWN_LABEL;
    let answer = resp.ok ? await resp.json() : await problemText(resp);
    if (resp.status === 413) answer = tooLarge(file, answer);
    if (seq !== classifySeq) return; // a later request was made meanwhile: its answer is the one to show
    if (refusedLabel) { // the label asked about, not the image: the answer on show stands, and is still for `before`
      askedFor = before;
      announce(""); // not "Classifying…" under the error, as every refused classify leaves it
      whyNotRefused(answer);
      return;
    }
    if (!resp.ok) {
      askedFor.failed = true;
      hideAnswer();
      announce("");
      showError(answer);
      if (headers["X-API-Key"]) await keyRefused(resp, again);
      return;
    }
    render(answer, Boolean(whyNot));
  } catch (err) {
    if (seq !== classifySeq) return;
    askedFor.failed = true;
    hideAnswer();
    announce("");
    showError(`the service did not answer: ${err}`);
  } finally {
    if (seq === classifySeq) classifySettled();
  }
}

// No classify on its way any more: the button, the answer and the neighbours as they are between requests.
function classifySettled() {
  $("pending").hidden = true;
  $("classify-btn").removeAttribute("aria-disabled");
  $("classify-btn").textContent = "Classify";
  $("answer").classList.remove("stale");
  $("answer").removeAttribute("aria-busy");
  $("neighbors-section").classList.remove("stale");
}

// Too large (for the service, or a proxy before it): the image's size beside the limit, in the service's unit.
function tooLarge(file, why) {
  return [bdi(file.name), ` is ${file.size.toLocaleString("en")} bytes: ${why}`];
}

function badge(text, kind, title) {
  const span = document.createElement("span");
  span.textContent = text;
  if (kind) span.className = kind;
  if (title) span.title = title;
  $("badges").appendChild(span);
}

// The answer's sentence, as last said to a screen reader (`announce`): a why-not asked of the answer on show says
// only its reason, not the answer again.
let answerSaid = "";

// `whyNot`: the answer was asked for with a label's why-not.
function render(result, whyNot = false) {
  $("answer").hidden = false;
  $("neighbors-section").hidden = false;
  $("prediction").replaceChildren(...(result.label === null ? ["— (no neighbours)"]
    : namedNodes(result.label, result.label_name)));
  $("badges").replaceChildren();
  if (result.reranked) badge(`re-ranked by ${result.model || "the VLM"}`, "good", result.template || "");
  if (result.fallback_reason) badge(`vote used: ${result.fallback_reason}`, "warn");
  if (result.novelty !== null) {
    // No threshold: not calibrated yet for this k and label set (another calibration was running); ask again.
    const threshold = result.ood_threshold !== null ? ` (threshold ${result.ood_threshold.toFixed(3)})`
      : " (out of distribution not judged yet)";
    badge(`novelty ${result.novelty.toFixed(3)}${threshold}`, result.out_of_distribution ? "warn" : "",
          "mean cosine distance to the k neighbours");
  }
  if (result.out_of_distribution) badge("out of distribution", "warn", "unlike anything the memory holds");
  badge(`${result.vote.rule} vote, k=${result.vote.k}`, "", `settings from: ${result.vote.origin}`);
  if (result.confidence !== null) {
    badge(`confidence ${result.confidence.toFixed(3)}`, result.unsure ? "warn" : "",
          "the share of the vote of the label answered");
  }
  if (result.cached) badge("cached", "");
  showUnsure(result);
  // The nearest neighbour's label lost the vote for having too few points at this k: say so, and offer the k at
  // which its points win (the vote's own k, above it, only grows harder for them to win).
  const nearest = result.neighbors[0];
  const few = nearest && fewPoints[nearest.label];
  const outvoted = few && !result.reranked && result.label !== nearest.label && result.vote.rule === few.rule
    && result.vote.k > few.k_that_fits ? few : null;
  showFewAnswer(outvoted, nearest, result.vote.k, result.why_not);

  const scores = $("scores");
  scores.replaceChildren();
  // Highest first, as the service sends them: a JS object lists integer-like keys ("7") first, whatever their share.
  for (const [label, share] of Object.entries(result.scores).sort((a, b) => b[1] - a[1]).slice(0, 5)) {
    const li = document.createElement("li");
    const names = byLabel(result.label_names);
    const name = labelLink(label, names[label]);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, share * 100)}%`;
    const pct = document.createElement("span");
    pct.textContent = `${(share * 100).toFixed(1)}%`;
    li.append(name, bar, pct);
    scores.appendChild(li);
  }

  const grid = $("neighbors");
  grid.replaceChildren();
  $("neighbors-note").textContent = `${result.neighbors.length} nearest memory points; weight = the vote each one cast`;
  for (const n of result.neighbors) grid.appendChild(card(n, result.label));
  showWhyNot(result);
  showTeach(result);

  const top = result.label === null ? null : result.scores[result.label];
  const sentence = (result.label === null ? "No neighbours: nothing to classify by"
    : `${named(result.label, result.label_name)}` + (top !== undefined ? `, ${(top * 100).toFixed(1)} % of the vote` : "")
      + ` of ${plural(result.neighbors.length, "neighbour")}`
      + (result.reranked ? ", re-ranked" : result.fallback_reason ? `; the vote was used: ${result.fallback_reason}` : "")
      + (result.out_of_distribution ? "; out of distribution" : "")
      + (result.unsure ? "; unsure: a person should check it" : "")
      + (outvoted ? `; the nearest neighbour is ${named(nearest.label, nearest.label_name)}, too few points to win at `
        + "this k" : ""));
  announce(whyNot && sentence === answerSaid ? "" : sentence); // "" takes back "Classifying…"
  answerSaid = sentence;
  // On a phone the answer is below the query: bring it into view, or only the button's flicker says it came.
  const box = $("answer").getBoundingClientRect();
  if (window.matchMedia("(max-width: 760px)").matches && box.top > window.innerHeight * 0.6) {
    $("answer").scrollIntoView({ behavior: scrollBehavior(), block: "start" });
  }
}

// An answer under the threshold asked for (`min_confidence`): said plainly, the label kept as a suggestion.
function showUnsure(result) {
  const note = $("unsure-note");
  note.hidden = !result.unsure;
  if (!result.unsure) { note.textContent = ""; return; }
  note.replaceChildren(...(result.label === null
    ? ["Unsure: no memory point could vote. A person should classify this image."]
    : ["Unsure: a person should check this answer. ", ...namedNodes(result.label, result.label_name),
      ` is a suggestion: its confidence ${result.confidence.toFixed(3)} is under the ${result.min_confidence} `
      + "asked for."]));
}

// `k`: this answer's (the stats' `few.k` is the default vote's, which a k typed in had been said to be). `why`: the
// answer's `why_not`. `k_that_fits` is the k the label's points' count allows, at which it still loses where its
// points are not all the nearest: no k is offered until why-not, asked of this label, has searched the k at which it
// wins (a "Classify with k = 6" had answered the same other label again). Then its k is said, and its button, below,
// is the one offered (two "Classify with k = 2" had shown, or two ks for one label).
function showFewAnswer(few, nearest, k, why) {
  const note = $("few-answer");
  note.hidden = !few;
  if (!few) { note.replaceChildren(); return; }
  const said = ["The nearest neighbour is ", ...namedNodes(nearest.label, nearest.label_name), ", a label of "
    + `${plural(few.points, "point")}: too few to win this ${few.rule} vote of k = ${k}. Add images of it`];
  if (!why || why.label !== nearest.label) {
    note.replaceChildren(...said, ", or ", findWinningK(nearest));
  } else {
    note.replaceChildren(...said, why.k_that_wins === null ? "." : `, or classify with k = ${why.k_that_wins} (below).`);
  }
}

// A button that asks why not the label `target` (filled in the why-not field, as if typed there): the answer comes
// back with the k at which it wins, if one does, and the button that classifies with it.
function findWinningK(target) {
  const find = document.createElement("button");
  find.type = "button";
  find.className = "find-k";
  find.replaceChildren("Find the k at which ", ...namedNodes(target.label, target.label_name), " wins");
  find.addEventListener("click", () => {
    $("why-not-label").value = target.label;
    askWhyNot();
  });
  return find;
}

// A button that classifies again with another k, for the label `target` (and, given `whyNot`, asks again why not
// that label). It says which label it is for: two may show, the few-points note's and why-not's.
function classifyWithK(k, target, whyNot = null) {
  const retry = document.createElement("button");
  retry.type = "button";
  retry.className = "classify-with-k";
  retry.replaceChildren(`Classify with k = ${k} for `, ...namedNodes(target.label, target.label_name));
  retry.addEventListener("click", () => {
    // Focus goes to the k: the answer's why-not reason is heard from its live region
    $("why-not-reason").setAttribute("aria-live", "polite");
    $("k").value = String(k);
    $("k").focus(); // this button goes with the answer: the keyboard goes to the k it set
    classify(whyNot);
  });
  return retry;
}

// Why the vote did not answer the label asked about (`why_not`): its reason, the k at which it wins, and its points
// nearest the image as cards, with their ranks among all the memory's points and whether they voted.
function showWhyNot(result) {
  const why = result.why_not;
  $("why-not-label").removeAttribute("aria-invalid");
  let reason = [];
  if (why) {
    const few = why.few_points;
    // The API's "see few_points", said here as the labels' list says it (`few` is of the answer's k)
    const said = !few ? why.reason : why.reason.replace(": see few_points",
      ` (it takes ${few.needed} against a fuller label near it): add images of it`);
    reason = ["Why not ", ...namedNodes(why.label, why.label_name),
      `? ${said.charAt(0).toUpperCase()}${said.slice(1)}.`];
  }
  $("why-not-reason").replaceChildren(...reason);
  $("why-not-note").hidden = !why || !why.note;
  $("why-not-note").textContent = why && why.note ? `${why.note.charAt(0).toUpperCase()}${why.note.slice(1)}.` : "";
  const wins = why && why.label !== why.vote_label ? why.k_that_wins : null;
  $("why-not-k").hidden = wins === null;
  $("why-not-k").replaceChildren(...(wins === null ? [] : [classifyWithK(wins, why, why.label)]));
  const grid = $("why-not-points");
  grid.hidden = !why || !why.nearest.length;
  $("why-not-points-note").hidden = grid.hidden;
  grid.replaceChildren();
  if (grid.hidden) return;
  $("why-not-points-note").textContent = `Its ${plural(why.nearest.length, "point")} nearest this image, of `
    + `${count(why.points)}; rank 0 is the nearest of all the memory's points`;
  const voted = new Set(result.neighbors.map((n) => n.id));
  for (const p of why.nearest) {
    const node = card({ ...p, label: why.label, label_name: why.label_name }, result.label);
    node.dataset.testid = "why-not-card";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = p.rank === null ? "past the 1,000 nearest" : `rank ${p.rank}`;
    node.querySelector(".numbers").prepend(rank, " · ");
    // In words, not by colour: the points that voted and those outside the k
    node.querySelector(".weight").textContent = voted.has(p.id) ? `voted, weight ${p.weight.toFixed(3)}`
      : `no vote: outside k = ${result.vote.k}`;
    grid.appendChild(node);
  }
}

// The label asked about was refused (one the memory lacks: the message names those spelled or named like it).
function whyNotRefused(message) {
  showWhyNot({ why_not: null });
  $("why-not-label").setAttribute("aria-invalid", "true");
  showError(message);
}

// Spaces only pass a required field's check, and were then ignored unsaid: the field is emptied and says it is.
function refuseBlank(field) {
  field.value = "";
  field.reportValidity();
}

async function askWhyNot() {
  const typed = $("why-not-label").value.trim();
  if (!typed) { refuseBlank($("why-not-label")); return; }
  // A label's name, as the page shows it ("navy (blue)"), asks of that label: sent as typed, it was refused (422)
  const label = Object.hasOwn(perLabel, typed.normalize("NFC")) ? typed : labelNamed(typed) ?? typed;
  if (!currentFile) return;
  // The reason is heard as the keyboard lands on it: said by its live region too, a screen reader read it twice
  $("why-not-reason").setAttribute("aria-live", "off");
  await classify(label); // an answer on its way is for the same image: this one, asked later, is shown instead
  if ($("why-not-reason").textContent) $("why-not-reason").focus({ preventScroll: true }); // on to what it said
}

// "Egyptian cat (n02124075)" where the memory names its labels; the label alone where it does not.
// Control characters, and those a page shows as nothing or that reorder the text around them (U+202E RIGHT-TO-LEFT
// OVERRIDE and the other bidi controls, zero-width spaces, U+FEFF; line and paragraph separators), written as
// Python escapes them, as the CLI prints them: "\u202etac" had read "cat", and the rest of its sentence backwards.
// For what is shown only: the label itself is what is sent back. A lone surrogate too (a JSON "\udce9" gives one),
// which no page can draw: U+DC80-DCFF as the byte of a file name that is not UTF-8 (\xe9), as Python's visible does.
const HIDDEN = /^[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]$/u;
const ESCAPED = { "\t": "\\t", "\n": "\\n", "\r": "\\r" };
// A joiner that joins is shown as itself, as retrieval.text.visible shows it (its _joins): after a virama, a non-joiner
// between two letters of a joining script (Persian "نیم‌رخ"), a joiner inside an emoji sequence (👨‍👩‍👧).
const VIRAMA = /[\u{94d}\u{9cd}\u{a4d}\u{acd}\u{b4d}\u{bcd}\u{c4d}\u{ccd}\u{d3b}\u{d3c}\u{d4d}\u{dca}\u{e3a}\u{eba}\u{f84}\u{1039}\u{103a}\u{1714}\u{1715}\u{1734}\u{17d2}\u{1a60}\u{1b44}\u{1baa}\u{1bab}\u{1bf2}\u{1bf3}\u{2d7f}\u{a806}\u{a82c}\u{a8c4}\u{a953}\u{a9c0}\u{aaf6}\u{abed}\u{10a3f}\u{11046}\u{11070}\u{1107f}\u{110b9}\u{11133}\u{11134}\u{111c0}\u{11235}\u{112ea}\u{1134d}\u{11442}\u{114c2}\u{115bf}\u{1163f}\u{116b6}\u{1172b}\u{11839}\u{1193d}\u{1193e}\u{119e0}\u{11a34}\u{11a47}\u{11a99}\u{11c3f}\u{11d44}\u{11d45}\u{11d97}]/u;
const JOINING_LETTER = /^(?=\p{L})[\p{Script=Arabic}\p{Script=Syriac}\p{Script=Nko}\p{Script=Mongolian}\p{Script=Mandaic}\p{Script=Adlam}\p{Script=Hanifi_Rohingya}]$/u;
const PASSED = /^[\p{Mn}\p{Me}\p{Sk}\u{fe00}-\u{fe0f}]$/u;
function joins(chars, i) {
  const c = chars[i];
  if ((c !== "\u200c" && c !== "\u200d") || i === 0 || i === chars.length - 1) return false;
  if (VIRAMA.test(chars[i - 1])) return true;
  const base = (step) => {
    let j = i + step;
    while (j >= 0 && j < chars.length && PASSED.test(chars[j])) j += step;
    return chars[j] ?? "";
  };
  if (c === "\u200c") return JOINING_LETTER.test(base(-1)) && JOINING_LETTER.test(base(1));
  return /^\p{So}$/u.test(base(-1)) && /^\p{So}$/u.test(chars[i + 1]);
}

// Unambiguous, as visible() in Python is: the text's own backslashes are doubled where what follows them would read
// as an escape (a run of them doubled whole), so a label typed as the six characters \u202e shows \\u202e, not as
// the override itself does; elsewhere a backslash is itself (C:\data).
const ESCAPE_TAIL = /^(?:[ntr]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})/;
function visible(text) {
  const chars = [...String(text ?? "")];
  const escaped = chars.map((c, i) => HIDDEN.test(c) && !joins(chars, i));
  return chars.map((c, i) => {
    if (c === "\\") {
      let j = i + 1;
      while (chars[j] === "\\") j += 1;
      return j < chars.length && (escaped[j] || ESCAPE_TAIL.test(chars.slice(j, j + 9).join(""))) ? "\\\\" : c;
    }
    if (!escaped[i]) return c;
    const code = c.codePointAt(0);
    const hex = (digits) => code.toString(16).padStart(digits, "0");
    if (code >= 0xdc80 && code <= 0xdcff) return `\\x${(code - 0xdc00).toString(16).padStart(2, "0")}`;
    // U+0080-U+00FF as \u0085, as the CLI writes it: its \x85 is a byte of a file name that is not UTF-8
    return ESCAPED[c] ?? (code < 0x80 ? `\\x${hex(2)}` : code < 0x10000 ? `\\u${hex(4)}` : `\\U${hex(8)}`);
  }).join("");
}

function named(label, name) {
  return name ? `${visible(name)} (${visible(label)})` : visible(label);
}

// A label, name, source or key name put in a line of the page, escaped and isolated: right-to-left letters (Hebrew,
// Arabic) otherwise take the punctuation and numbers beside them into their own run, so "שלום (n01): 4" drew its
// parentheses and count out of order. For element text; a title or aria-label takes named()'s text.
function bdi(text) {
  return isolated(visible(text));
}

function isolated(shown) {
  const node = document.createElement("bdi");
  node.textContent = shown;
  return node;
}

// A file's name, isolated, to break where its words do ("n01983481_" / "16.JPEG"), not where a card's edge falls
// ("n01983481_16.J" / "PEG"): a break is offered after each "_" and "-", and before each ".". A part too long for a
// line on its own still breaks within it (the card's overflow-wrap: anywhere).
function fileName(shown) {
  return breakable(shown, /(?<=[_-])|(?=\.)/);
}

// A label on a card, as bdi() but breaking after each "_" and "-" ("American_Staffordshire_" / "terrier", not
// "American_Staf" / "fordshire_terri" / "er"): a folder's name is a label as it is.
function cardLabel(text) {
  return breakable(visible(text), /(?<=[_-])/);
}

function breakable(shown, at) {
  const node = document.createElement("bdi");
  shown.split(at).forEach((part, i) => node.append(...(i ? [document.createElement("wbr")] : []), part));
  return node;
}

// named() as nodes: the name and the label each isolated.
function namedNodes(label, name) {
  return name ? [bdi(name), " (", bdi(label), ")"] : [bdi(label)];
}

// A count as a person reads it: "12,345", as the page's byte sizes are written.
function count(n) {
  return n.toLocaleString("en");
}

function plural(n, word) {
  return `${count(n)} ${word}${n === 1 ? "" : "s"}`;
}

// A label that opens its memory points below: what the memory holds for it, not only what voted.
function labelLink(label, name, nodes = namedNodes(label, name)) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "label-link";
  button.replaceChildren(...nodes);
  button.title = `show the memory's points labelled ${named(label, name)}`;
  button.addEventListener("click", () => showLabel(label, name));
  return button;
}

// Each label-list request's number: a page that comes back after another label was opened is not shown there.
let labelSeq = 0;
let labelOpener = null; // the control that opened the label on show (a label's link): Back returns the keyboard to it
// `fromHistory`: drawn again by Back or Forward, no step of its own added.
async function showLabel(label, name, cursor = null, fromHistory = false) {
  showError("");
  if (!cursor && !fromHistory) labelOpener = document.activeElement;
  const seq = ++labelSeq;
  const params = new URLSearchParams({ label, limit: "24" });
  if (cursor) params.set("cursor", cursor);
  $("label-more").disabled = true; // a second click asked for the same page twice: every card shown twice
  let resp;
  try {
    resp = await fetch(`v1/memory/points?${params}`);
  } catch (err) {
    if (seq === labelSeq) showError(["could not list ", ...namedNodes(label, name), `: the service did not answer (${err})`]);
    return;
  } finally {
    if (seq === labelSeq) $("label-more").disabled = false;
  }
  if (seq !== labelSeq) return;
  if (!resp.ok) {
    showError(["could not list ", ...namedNodes(label, name), `: ${await problemText(resp)}`]);
    return;
  }
  const page = await resp.json();
  if (seq !== labelSeq) return;
  const grid = $("label-points");
  if (!cursor) grid.replaceChildren();
  const shown = new Set([...grid.children].map((c) => c.dataset.pointId));
  let firstNew = null;
  for (const p of page.points) {
    if (shown.has(p.id)) continue;
    const node = grid.appendChild(pointCard(p));
    firstNew = firstNew || node;
  }
  labelShown = { label, name, cursor: page.next_cursor };
  $("label-title").replaceChildren(...namedNodes(label, name));
  updateLabelNote();
  $("label-more").hidden = !page.next_cursor;
  $("label-section").hidden = false;
  // A step of the tab's history, as following a link is: Back returns from it to the answer (it had left the page)
  if (!cursor && !fromHistory && !(history.state && history.state.vmemLabel === label)) {
    history.pushState({ vmemLabel: label, vmemName: name ?? null }, "");
  }
  if (!cursor) {
    $("label-section").scrollIntoView({ behavior: scrollBehavior(), block: "start" });
    $("label-heading").focus({ preventScroll: true }); // the keyboard goes where the eyes were sent
  } else if (firstNew) { // "more": on to the first card it brought, not back to the top of the page
    firstNew.tabIndex = -1;
    firstNew.focus();
  }
}

// Back or Forward between the page's steps: a label's points, or the page without them (the answer, the query).
function stepTo(state) {
  if (state && typeof state.vmemLabel === "string") {
    showLabel(state.vmemLabel, state.vmemName, null, true);
    return;
  }
  labelSeq += 1; // a label's page on its way is not drawn
  labelShown = null;
  $("label-section").hidden = true;
  $("label-points").replaceChildren();
  // The keyboard back on the link that opened the label (the browser scrolls back to where it was), else where such
  // links are: the answer, or the labels' list
  const opener = labelOpener;
  labelOpener = null;
  if (opener && opener !== document.body && opener.isConnected && opener.getClientRects().length) {
    opener.focus();
    return;
  }
  const answered = !$("answer").hidden;
  ($(answered ? "answer" : "labels-box")).scrollIntoView({ block: "nearest" });
  (answered ? $("prediction-heading") : $("labels-box").querySelector("summary")).focus({ preventScroll: true });
}

// A label or name as the filters compare it: "café" pasted from a Mac's file name is decomposed (e + a combining
// accent), typed it is composed; the same text on screen, and neither had found the other.
function folded(text) {
  return (text || "").normalize("NFC").toLowerCase();
}

// The labels-box list: every label (most points first), filtered by label or name as the user types; how many
// matched is said to a screen reader then (`say`), not at each reload of the stats.
function listLabels(say = false) {
  const wanted = folded($("label-filter").value.trim());
  const list = $("label-list");
  list.replaceChildren();
  let hidden = 0;
  for (const label of labelsByPoints) {
    const points = perLabel[label];
    const name = labelNames[label];
    if (wanted && !folded(label).includes(wanted) && !folded(name).includes(wanted)) continue;
    if (list.children.length >= 500) { hidden++; continue; } // a 21k-class memory: filter to reach the rest
    const li = document.createElement("li");
    li.dataset.label = label;
    const n = document.createElement("span");
    n.className = "muted";
    n.textContent = fewPoints[label] ? `${count(points)} · too few` : count(points); // said in words: the note above says why
    li.append(labelLink(label, name), n);
    list.appendChild(li);
  }
  const matched = list.children.length + hidden;
  if (hidden) {
    const more = document.createElement("li");
    more.className = "muted";
    more.textContent = `… ${count(hidden)} more: type to filter`;
    list.appendChild(more);
  }
  if (wanted && matched === 0) { // said where the list was: an empty box had looked like a list still loading
    const none = document.createElement("li");
    none.className = "muted";
    const said = document.createElement("span"); // one line: the list's items lay their parts apart
    said.append("no label matches “", bdi($("label-filter").value.trim()), "”");
    none.append(said);
    list.appendChild(none);
  }
  if (!say) return;
  $("label-count").textContent = !wanted ? plural(labelsByPoints.length, "label")
    : matched === 0 ? "no label matches"
    : `${count(matched)} of ${plural(labelsByPoints.length, "label")} match` + (hidden ? "; the first 500 listed" : "");
}

// Suggestions for a relabel: the memory's labels, most points first, each with its name. A list is kept short
// for the browser; past that, it holds the labels that match what is typed (label or name), so that every label
// can be offered: a catalogue's 50,000 had offered its first 2,000 only.
const LABEL_OPTIONS_MAX = 2000;
function fillLabelOptions(typed = "") {
  const needle = folded(typed.trim());
  const matching = needle && labelsByPoints.length > LABEL_OPTIONS_MAX
    ? labelsByPoints.filter((l) => folded(l).includes(needle) ||
      folded(Object.hasOwn(labelNames, l) ? labelNames[l] : "").includes(needle))
    : labelsByPoints;
  const options = matching.slice(0, LABEL_OPTIONS_MAX).map((label) => {
    const opt = document.createElement("option");
    opt.value = label;
    if (labelNames[label]) opt.label = visible(labelNames[label]);
    return opt;
  });
  $("label-options").replaceChildren(...options);
}

document.addEventListener("input", (ev) => {
  if (ev.target.getAttribute && ev.target.getAttribute("list") === "label-options"
      && labelsByPoints.length > LABEL_OPTIONS_MAX) {
    fillLabelOptions(ev.target.value);
  }
});

// The journal's latest edits (GET v1/memory/history), read when the box is opened and after each edit here; "Show
// earlier" pages back through the rest (`next_cursor`), a page at a time, until none remain.
const HISTORY_PAGE = 20;
let historySeq = 0; // a list read again (an edit here) drops the earlier pages asked for meanwhile
async function loadHistory() {
  if (!$("history-box").open) return;
  const seq = ++historySeq;
  const body = await historyPage(null);
  if (seq !== historySeq) return;
  if (typeof body === "string") {
    const li = document.createElement("li");
    li.textContent = `history unavailable: ${body}`;
    $("history-list").replaceChildren(li);
    return;
  }
  const items = body.entries.map(historyItem);
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "no edits recorded yet";
    items.push(li);
  }
  $("history-list").replaceChildren(...items);
  showEarlier(body);
}

// A page of the journal, newest first: its JSON, or what went wrong (a string).
async function historyPage(cursor) {
  // counts are shown, not ids: a big forget's are MBs
  const params = new URLSearchParams({ limit: String(HISTORY_PAGE), ids: "false" });
  if (cursor) params.set("cursor", cursor);
  let resp;
  try {
    resp = await fetch(`v1/memory/history?${params}`);
  } catch (err) {
    return `the service did not answer (${err})`;
  }
  return resp.ok ? resp.json() : problemText(resp);
}

function historyItem(e) {
  const li = document.createElement("li");
  li.dataset.op = e.op;
  const labels = Object.entries(e.labels).slice(0, 3).flatMap(([l, n], i) =>
    [...(i ? [", "] : []), ...namedNodes(l, labelNames[l]), `: ${count(n)}`]);
  // named, or their names dropped (a `replace`)
  const labelsNamed = Object.keys((e.detail && e.detail.names) || {}).length +
    ((e.detail && e.detail.dropped) || []).length;
  const what = e.op === "name" ? [` ${plural(labelsNamed, "label")}`] : ["erase", "tune", "settings"].includes(e.op)
    ? [] : [` ${plural(e.points, "point")}`,
      ...(labels.length ? [" (", ...labels, `${Object.keys(e.labels).length > 3 ? ", …" : ""})`] : []),
      ...(e.to ? [" to ", ...namedNodes(e.to, labelNames[e.to])] : [])];
  const when = document.createElement("time");
  when.dateTime = e.at;
  when.textContent = new Date(e.at).toLocaleString();
  const via = document.createElement("span");
  via.className = "muted";
  via.append(" via ", bdi(e.via), ...(e.by ? [" (key ", bdi(e.by), ")"] : []));  // the API key's name: who made it
  li.append(when, ` ${e.op}`, ...what, via);
  return li;
}

// After the list's last page: how many edits are older, and a button that lists the next page of them.
function showEarlier(body) {
  const list = $("history-list");
  const old = list.querySelector("li[data-earlier]");
  if (!(body.earlier > 0 && body.next_cursor)) {
    if (old) old.remove();
    return;
  }
  const li = old || document.createElement("li");
  li.className = "muted";
  li.dataset.earlier = body.earlier;
  const more = document.createElement("button");
  more.type = "button";
  more.className = "show-earlier";
  more.textContent = `Show ${Math.min(body.earlier, HISTORY_PAGE)} earlier`;
  const seq = historySeq;
  more.addEventListener("click", async () => {
    if (more.dataset.busy) return;
    more.dataset.busy = "1";
    more.setAttribute("aria-disabled", "true"); // not disabled: that would drop the keyboard's focus to the page
    const page = await historyPage(body.next_cursor);
    if (seq !== historySeq) return; // the list was read again meanwhile: its own button pages from its start
    delete more.dataset.busy;
    more.removeAttribute("aria-disabled");
    if (typeof page === "string") {
      li.querySelector(".history-note").textContent = ` (could not list them: ${page})`;
      return;
    }
    const items = page.entries.map(historyItem);
    li.before(...items);
    showEarlier(page);
    // The keyboard goes to the first edit listed, which a screen reader reads; Tab from it reaches the button again
    if (items.length) {
      items[0].tabIndex = -1;
      items[0].focus();
    }
  });
  const note = document.createElement("span");
  note.className = "history-note";
  li.replaceChildren(`… and ${plural(body.earlier, "earlier edit")} `, more, note);
  if (!old) list.append(li);
}

// The label audit (GET v1/memory/suspects): points the rest of the memory votes another label. The service
// answers 202 while it audits; the box asks again every 2 s while it is open.
let suspectsTimer = null;
let suspectsShown = null; // the audit's answer on show, kept up to date as its suspects are relabelled here
async function loadSuspects() {
  clearTimeout(suspectsTimer);
  if (!$("suspects-box").open) return;
  const list = $("suspects-list");
  let resp;
  try {
    resp = await fetch("v1/memory/suspects?limit=20");
  } catch (err) { // the service went away mid-audit: say so, and ask again (one failure ended the polling)
    $("suspects-note").textContent = `the service did not answer (${err}); asking again in 5 s…`;
    suspectsTimer = setTimeout(loadSuspects, 5000);
    return;
  }
  if (resp.status === 202) {
    const body = await resp.json();
    $("suspects-note").textContent = `auditing the memory's labels: ${count(body.searched)} of ${plural(body.points, "point")} searched…`;
    suspectsTimer = setTimeout(loadSuspects, 2000);
    return;
  }
  if (!resp.ok) {
    $("suspects-note").textContent = `no audit: ${await problemText(resp)}`;
    list.replaceChildren();
    return;
  }
  suspectsShown = await resp.json();
  showSuspectsNote();
  list.replaceChildren(...suspectsShown.suspects.map(suspectItem));
}

function showSuspectsNote() {
  const body = suspectsShown;
  const are = body.total_suspects === 1 ? "is" : "are";
  $("suspects-note").textContent = `${count(body.total_suspects)} of ${plural(body.points, "point")} ${are} voted another ` +
    `label by their nearest others (audit: ${body.seconds} s)` + (body.total_suspects > body.suspects.length ? `; the ${body.suspects.length} surest:` : "");
}

function suspectItem(s) {
  const li = document.createElement("li");
  li.dataset.pointId = s.id;
  const img = document.createElement("img");
  img.src = s.thumbnail_url;
  img.alt = "";
  img.loading = "lazy";
  const text = document.createElement("span");
  text.append(labelLink(s.label, s.label_name), " → ", labelLink(s.suggested, s.suggested_name));
  const share = document.createElement("span");
  share.className = "muted";
  share.textContent = ` ${Math.round(100 * s.share)} % of the vote`;
  const fix = document.createElement("button");
  fix.type = "button";
  fix.className = "relabel-suggested";
  fix.textContent = "Relabel";
  fix.title = `relabel this point ${named(s.suggested, s.suggested_name)}`;
  fix.setAttribute("aria-label", `Relabel ${shortSource(s.source)} from ${named(s.label, s.label_name)} ` +
    `to ${named(s.suggested, s.suggested_name)}`);
  fix.addEventListener("click", () => relabel({ id: s.id, label: s.label, label_name: s.label_name }, s.suggested));
  li.append(img, text, share, fix);
  return li;
}

// A suspect relabelled or forgotten (from any of its cards): one fewer, and the count says so without auditing again.
function dropSuspect(pointId) {
  const items = [...$("suspects-list").children].filter((li) => li.dataset.pointId === pointId);
  for (const li of items) li.remove();
  if (!suspectsShown || !suspectsShown.suspects.some((x) => x.id === pointId)) return;
  suspectsShown.total_suspects -= 1;
  suspectsShown.suspects = suspectsShown.suspects.filter((x) => x.id !== pointId);
  showSuspectsNote();
}

function updateLabelNote() {
  if (!labelShown) return;
  const total = perLabel[labelShown.label] ?? 0;
  $("label-note").textContent = `${count($("label-points").children.length)} of ${plural(total, "point")} shown`;
}

function pointCard(p) {
  const node = $("card-template").content.firstElementChild.cloneNode(true);
  node.dataset.pointId = p.id;
  node.dataset.testid = "point-card";
  const img = node.querySelector("img");
  img.alt = visible(p.label_name || p.label);
  img.title = visible(p.source);
  img.addEventListener("error", () => { img.hidden = true; node.querySelector(".no-thumb").hidden = false; });
  node.querySelector(".no-thumb").textContent = "no thumbnail";
  img.src = p.thumbnail_url;
  node.querySelector(".label").replaceChildren(fileName(shortSource(p.source)));
  node.querySelector(".label").title = visible(p.source);
  const misled = [p.prune_count ? ` · misled ${p.prune_count}` : "",
    ...(p.relabelled_from ? [" · was ", ...namedNodes(p.relabelled_from, labelNames[p.relabelled_from])] : [])];
  node.querySelector(".numbers").replaceChildren(p.excluded ? "excluded (pruned)" : (p.added_at || "").slice(0, 10),
    ...misled);
  node.querySelector(".numbers").title = p.prune_count ? "leave-one-out decisions this point misled (vmem prune)" : "";
  wireForget(node, p);
  wireRelabel(node, p);
  nameButtons(node, named(p.label, p.label_name), p.source);
  return node;
}

// A source as a person names it: a file's name, an upload's name (its hash only where it came without one).
function shortSource(source) {
  const upload = /^upload:sha256:([0-9a-f]{64})(?::(.*))?$/.exec(source);
  if (upload) return visible(upload[2]) || `upload ${upload[1].slice(0, 12)}`;
  return visible(source.split("/").pop());
}

// Fifty "Forget" buttons read alike to a screen reader: each is named with its point.
function nameButtons(node, label, source) {
  const what = `${label}, ${shortSource(source)}`;
  node.querySelector(".forget").setAttribute("aria-label", `Forget ${what}`);
  node.querySelector(".relabel").setAttribute("aria-label", `Relabel ${what}`);
}

function card(n, predicted) {
  const node = $("card-template").content.firstElementChild.cloneNode(true);
  node.dataset.pointId = n.id;
  if (n.label === predicted) node.classList.add("same");
  const img = node.querySelector("img");
  const missing = node.querySelector(".no-thumb");
  img.alt = visible(n.label_name || n.label);
  img.title = visible(n.source);
  img.addEventListener("error", async () => {
    img.hidden = true;
    missing.hidden = false;
    missing.textContent = "no thumbnail";
    try { // why, as the service says it
      const resp = await fetch(n.thumbnail_url);
      if (!resp.ok) missing.textContent = await problemText(resp);
    } catch { /* the service is gone: "no thumbnail" stands */ }
  });
  img.src = n.thumbnail_url;
  node.querySelector(".label").replaceChildren(labelLink(n.label, n.label_name, [cardLabel(n.label_name || n.label)]));
  node.querySelector(".similarity").textContent = `sim ${n.similarity.toFixed(3)}`;
  node.querySelector(".weight").textContent = `weight ${n.weight.toFixed(3)}`;
  wireForget(node, n);
  wireRelabel(node, n);
  nameButtons(node, named(n.label, n.label_name), n.source);
  return node;
}

// The API key for an edit, kept for this tab; null (and the key box opened) when none was entered.
// `retry` is kept: Enter in the key field carries on with what was asked (a keyboard user had had to Tab back to
// the button, past up to k cards).
let retryWithKey = null;
function apiKeyFor(action, retry) {
  const key = $("api-key").value.trim();
  retryWithKey = null; // one asked for before is out of date: this is what the user does now
  if (!key) {
    retryWithKey = retry || null;
    $("key-box").open = true;
    $("api-key").focus();
    showError(`enter the API key to ${action}`);
    return null;
  }
  sessionStorage.setItem("vmem-api-key", key);
  return key;
}

// `focused`: the keyboard is sent to the note (after an edit whose control goes), which a screen reader reads there:
// said by the live region as well, it was heard twice.
function showEditNote(text, focused = false) {
  $("edit-note").setAttribute("aria-live", focused ? "off" : "polite");
  $("edit-note").replaceChildren(...sentenceParts(text));
  $("edit-note").scrollIntoView({ block: "nearest" });
}

function hideEditNote() {
  $("edit-note").textContent = "";
}

// A point's cards: as a neighbour and in the open label list, each goes or changes with it.
function cardsOf(pointId) {
  return [...document.querySelectorAll("[data-point-id]")].filter((c) => c.dataset.pointId === pointId);
}

// An edit's buttons on the point's cards, off while it runs: a second click sent it twice (an erase takes seconds).
// aria-disabled, not disabled: a disabled button drops the keyboard's focus to the page.
const editing = new Set();
function whileEditing(pointId, on) {
  if (on) editing.add(pointId); else editing.delete(pointId);
  for (const card of cardsOf(pointId)) {
    for (const b of card.querySelectorAll("button")) {
      if (on) b.setAttribute("aria-disabled", "true"); else b.removeAttribute("aria-disabled");
    }
  }
}

// Forget asks first, in the card: what goes is gone for good (with "also erase", out of the files too), and a dry
// run finds the point's copies stored under other names (an upload, a re-saved JPEG), offered to go with it.
function wireForget(node, n) {
  const button = node.querySelector(".forget");
  const box = node.querySelector(".forget-confirm");
  const close = () => { box.hidden = true; button.setAttribute("aria-expanded", "false"); };
  button.setAttribute("aria-expanded", "false");
  button.addEventListener("click", () => {
    if (button.getAttribute("aria-disabled") === "true") return;
    if (!box.hidden) { close(); return; }
    askForget(n, node);
  });
  // The answer does what the question said: "also erase" as it was when asked (ticked since, the question had
  // not said "cannot be undone", and the vectors went from the files all the same)
  for (const [answer, withCopies] of [[".forget-one", false], [".forget-copies", true]]) {
    box.querySelector(answer).addEventListener("click", () => {
      if (editing.has(n.id)) return;
      close();
      button.focus(); // the question goes: the keyboard waits on the card's Forget (off while it runs), not the page
      forget(n, withCopies, box.dataset.erase === "true");
    });
  }
  const cancel = () => { close(); button.focus(); };
  box.querySelector(".forget-cancel").addEventListener("click", cancel);
  box.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    e.preventDefault();
    cancel();
  });
}

const SHOWN_COPIES = 5;
async function askForget(n, node) {
  if (editing.has(n.id)) return;
  const askAgain = () => {
    const again = cardsOf(n.id).find((c) => c === node) || cardsOf(n.id)[0];
    return again && askForget(n, again);
  };
  const key = apiKeyFor("forget a memory point", askAgain);
  if (!key) return;
  showError("");
  hideEditNote();
  whileEditing(n.id, true);
  let copies = null;
  let unchecked = "";
  try {
    const resp = await fetch(`v1/memory/points/${encodeURIComponent(n.id)}/forget-like?dry_run=true`, {
      method: "POST", headers: { "X-API-Key": key },
    });
    if (resp.status === 404) { // forgotten meanwhile (another tab, another user): its cards go, said so
      forgottenElsewhere(n);
      return;
    }
    if (resp.status === 401 || resp.status === 403) {
      showError(["could not forget ", ...namedNodes(n.label, n.label_name), `: ${await problemText(resp)}`]);
      await keyRefused(resp, askAgain);
      return;
    }
    if (resp.ok) copies = (await resp.json()).matched.filter((m) => m.id !== n.id);
    else unchecked = await problemText(resp);
  } catch (err) {
    unchecked = `the service did not answer (${err})`;
  } finally {
    whileEditing(n.id, false);
  }
  const erase = $("erase").checked && !$("erase").disabled;
  const question = ["Forget this point (", ...namedNodes(n.label, n.label_name), ")? No answer will cite it again"
    // The segments, as the CLI says ("the memory's files" read as all of them): the engine's log keeps it a while
    + (erase ? "; its vector is erased from the memory's segments (the engine's write-ahead log keeps its latest "
      + "writes until later ones fill it: README, “Forgetting”): this cannot be undone." : ".")];
  if (copies === null) question.push(` Its copies were not looked for: ${unchecked}`);
  else if (copies.length) {
    question.push(` ${copies.length === 1 ? "1 other point looks" : `${count(copies.length)} other points look`} like a `
      + "copy of its image: ");
    copies.slice(0, SHOWN_COPIES).forEach((m, i) => question.push(...(i ? [", "] : []), isolated(shortSource(m.source)),
      " (", ...namedNodes(m.label, m.label_name), `, ${m.similarity.toFixed(3)})`));
    question.push(`${copies.length > SHOWN_COPIES ? ", …" : ""}.`);
  }
  const box = node.querySelector(".forget-confirm");
  box.dataset.erase = String(erase);
  const asked = box.querySelector(".forget-question");
  asked.replaceChildren(...question);
  // A screen reader lands on "Forget it": the question (what cannot be undone, which copies) is its description
  asked.id ||= `forget-question-${Math.random().toString(36).slice(2, 10)}`; // a point may have two cards
  box.setAttribute("aria-describedby", asked.id);
  const withCopies = box.querySelector(".forget-copies");
  withCopies.hidden = !copies || !copies.length;
  withCopies.textContent = copies && copies.length ? `Forget it and ${copies.length === 1 ? "its copy" : `its ${count(copies.length)} copies`}` : "";
  box.setAttribute("aria-label", `Forget ${named(n.label, n.label_name)}?`);
  box.hidden = false;
  node.querySelector(".forget").setAttribute("aria-expanded", "true");
  box.querySelector(".forget-one").focus();
}

// A point gone before an edit of it reached the service: its cards go too, and the page says why.
async function forgottenElsewhere(n) {
  showEditNote(["a point labelled ", ...namedNodes(n.label, n.label_name),
    " was forgotten already (elsewhere, meanwhile)"], true);
  $("edit-note").focus({ preventScroll: true }); // before the control pressed goes, as after a forget
  for (const card of cardsOf(n.id)) card.remove();
  dropSuspect(n.id);
  untaught(n.id);
  await loadStats();
  updateLabelNote();
}

// Returns whether the point was forgotten. `withCopies`: every point that looks like a copy of it goes too (found
// again as they go: what the question showed, unless the memory changed since). `erase`: as the question said.
async function forget(n, withCopies, erase) {
  if (editing.has(n.id)) return false;
  const again = () => cardsOf(n.id).length && forget(n, withCopies, erase);
  const key = apiKeyFor("forget a memory point", again);
  if (!key) return false;
  showError("");
  hideEditNote();
  const point = `v1/memory/points/${encodeURIComponent(n.id)}`;
  whileEditing(n.id, true);
  let resp;
  try {
    resp = await fetch(`${point}${withCopies ? "/forget-like" : ""}${erase ? "?erase=true" : ""}`, {
      method: withCopies ? "POST" : "DELETE", headers: { "X-API-Key": key },
    });
  } catch (err) {
    showError(["could not forget ", ...namedNodes(n.label, n.label_name), `: the service did not answer (${err})`]);
    return false;
  } finally {
    whileEditing(n.id, false);
  }
  if (resp.status === 404) {
    await forgottenElsewhere(n);
    return false;
  }
  if (!resp.ok) {
    await editFailed(["could not forget ", ...namedNodes(n.label, n.label_name), `: ${await problemText(resp)}`],
      resp, again);
    return false;
  }
  const body = await resp.json();
  const others = body.deleted - 1;
  showEditNote(["forgot a point labelled ", ...namedNodes(n.label, n.label_name),
    (others > 0 ? ` and ${others === 1 ? "1 copy" : `${count(others)} copies`} of it` : "")
    + (body.erased ? `, and erased ${others > 0 ? "their vectors" : "its vector"} from the memory's segments` : "")],
  true);
  // The keyboard goes to what happened before the control pressed (a card's, the add's Undo) goes with the point:
  // after, it fell to the page (<body>, where a screen reader starts over) until the answer was asked again.
  $("edit-note").focus({ preventScroll: true });
  for (const id of withCopies ? body.matched.map((m) => m.id) : [n.id]) {
    for (const card of cardsOf(id)) card.remove(); // as a neighbour, in the label list
    dropSuspect(id);
    untaught(id);
  }
  await loadStats();
  updateLabelNote();
  await classify(); // the answer without those points
  return true;
}

function wireRelabel(node, p) {
  const form = node.querySelector(".relabel-form");
  const input = form.querySelector("input");
  const toggle = node.querySelector(".relabel");
  form.id = `relabel-${p.id}-${Math.random().toString(36).slice(2, 8)}`; // a point may have two cards
  toggle.setAttribute("aria-controls", form.id);
  toggle.setAttribute("aria-expanded", "false");
  const show = (open) => {
    form.hidden = !open;
    toggle.setAttribute("aria-expanded", String(open));
  };
  toggle.addEventListener("click", () => {
    if (toggle.getAttribute("aria-disabled") === "true") return;
    show(form.hidden);
    if (!form.hidden) input.focus();
  });
  // Escape puts it away, and the keyboard back on the button that opened it (the form had stayed open: the only way
  // out was to find that button again).
  form.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    e.preventDefault();
    show(false);
    toggle.focus();
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    relabel(p, input.value.trim());
  });
}

// Returns whether the point was relabelled.
async function relabel(p, to) {
  if (editing.has(p.id)) return false;
  const again = () => cardsOf(p.id).length && relabel(p, to);
  const key = apiKeyFor("relabel a memory point", again);
  if (!key) return false;
  showError("");
  hideEditNote();
  whileEditing(p.id, true);
  let resp;
  try {
    resp = await fetch(`v1/memory/points/${encodeURIComponent(p.id)}`, {
      method: "PATCH", headers: { "X-API-Key": key, "Content-Type": "application/json" },
      body: JSON.stringify({ label: to }),
    });
  } catch (err) {
    showError(["could not relabel the point labelled ", ...namedNodes(p.label, p.label_name),
      `: the service did not answer (${err})`]);
    return false;
  } finally {
    whileEditing(p.id, false);
  }
  if (!resp.ok) {
    await editFailed(["could not relabel the point labelled ", ...namedNodes(p.label, p.label_name),
      `: ${await problemText(resp)}`], resp, again);
    return false;
  }
  const point = await resp.json();
  showEditNote(["relabelled a point from ", ...namedNodes(p.label, p.label_name), " to ",
    ...namedNodes(point.label, point.label_name)], true);
  // Listed under a label it no longer has (from its own card or its neighbour card): it goes from the list.
  if (labelShown && point.label !== labelShown.label) {
    for (const card of cardsOf(p.id)) if (card.parentElement === $("label-points")) card.remove();
  }
  dropSuspect(p.id); // labelled anew: the audit's vote on it is out of date
  await loadStats();
  updateLabelNote();
  await classify(); // the answer with the point's new label
  $("edit-note").focus({ preventScroll: true }); // the cards were drawn again: the keyboard goes to what happened
  return true;
}

// Teaching the memory the image asked about (POST v1/memory with the key): a wrong answer corrected, or a new class
// begun, without leaving the page. An image the answer cites as its own neighbour (features the same within the
// float16 vectors' slack, SIMILARITY_SLACK in vmem) is in the memory already: added beside the point built from its
// file (keyed by path, where an upload is keyed by its bytes), or re-saved, it would be a second point of one image.
const SAME_IMAGE_SIMILARITY = 1 - 1e-3;
let taught = null; // {id, label, label_name}: the point the last add here made, which Undo forgets

function showTeach(result) {
  const same = result.neighbors.find((n) => n.similarity >= SAME_IMAGE_SIMILARITY);
  $("teach-form").hidden = Boolean(same);
  $("teach-known").hidden = !same;
  $("teach-known").replaceChildren(...(!same ? [] : ["This image is in the memory, labelled ",
    ...namedNodes(same.label, same.label_name), " (", isolated(shortSource(same.source)),
    "): its card below relabels or forgets it."]));
}

// What the label typed is: said as it is typed, since a new label is allowed but should be meant. `event`: the
// typing's; a stats refresh (after an add, a forget) changes the hint unsaid, the edit's own note saying what changed
// (the add's count had been said before its note, as the form went).
function teachHint(event = null) {
  $("teach-hint").setAttribute("aria-live", event ? "polite" : "off");
  const typed = $("teach-label").value.trim().normalize("NFC");
  let hint = [];
  if (typed && Object.hasOwn(perLabel, typed)) {
    hint = [...namedNodes(typed, labelNames[typed]), `: ${plural(perLabel[typed], "point")} in the memory`];
  } else if (typed) {
    const owner = labelsByPoints.find((l) => labelNames[l] && folded(labelNames[l]) === folded(typed));
    hint = owner ? ["the name of the label ", bdi(owner), ": add the image under ", bdi(owner)]
      : ["a new label: no point of the memory has it yet"];
  }
  // said again only if new
  if ($("teach-hint").textContent !== textOf(hint)) $("teach-hint").replaceChildren(...hint);
}

// The label whose name `typed` is (any case, either Unicode form); null where none is, or several are.
function labelNamed(typed) {
  const owners = labelsByPoints.filter((l) => labelNames[l] && folded(labelNames[l]) === folded(typed));
  return owners.length === 1 ? owners[0] : null;
}

// The add (and its Undo) done with: the point went, or another image was chosen.
function untaught(pointId) {
  if (pointId !== null && (!taught || taught.id !== pointId)) return;
  taught = null;
  $("teach-note").textContent = "";
  $("teach-undo").hidden = true;
}

async function teach() {
  const add = $("teach-add");
  // Not while the answer is on its way: the label typed was for the answer on show, maybe of the image before.
  if (add.getAttribute("aria-disabled") === "true" || $("answer").getAttribute("aria-busy") === "true") return;
  const label = $("teach-label").value.trim();
  const file = currentFile;
  if (!label) { refuseBlank($("teach-label")); return; }
  if (!file) return;
  const again = () => currentFile === file && teach();
  const key = apiKeyFor("add the image to the memory", again);
  if (!key) return;
  showError("");
  hideEditNote();
  untaught(null);
  add.setAttribute("aria-disabled", "true"); // a second click added it twice (a relabel, had the label changed)
  let resp;
  try {
    const form = new FormData();
    form.append("images", file, file.name);
    form.append("label", label);
    resp = await fetch("v1/memory", { method: "POST", body: form, headers: { "X-API-Key": key } });
  } catch (err) {
    showError(["could not add the image as ", bdi(label), `: the service did not answer (${err})`]);
    return;
  } finally {
    add.removeAttribute("aria-disabled");
  }
  if (!resp.ok) {
    await editFailed(["could not add the image as ", bdi(label), `: ${await problemText(resp)}`], resp, again);
    return;
  }
  const body = await resp.json();
  const point = body.added[0];
  const wasNew = !Object.hasOwn(perLabel, point.label);
  await loadStats();
  const as = () => namedNodes(point.label, point.label_name); // nodes: a second use would move the first
  const note = point.relabelled_from
    ? ["this image was in the memory as ", ...namedNodes(point.relabelled_from, labelNames[point.relabelled_from]),
      ": it is labelled ", ...as(), " now"]
    : !point.new ? ["this image was in the memory already as ", ...as(), ": not added again"]
    : ["added this image to the memory as ", ...as(), ", " + (wasNew ? "a new label"
      : `now a label of ${plural(perLabel[point.label] ?? 1, "point")}`)];
  const few = (body.few_points || []).find((f) => f.label === point.label);
  if (few) {
    note.push(`. It has too few points to win the default ${few.rule} vote of k = ${few.k} against a fuller label `
      + `near it (${few.points} of ${few.needed}): add more images of it, or classify with k = ${few.k_that_fits} `
      + "or less.");
  }
  if (file !== currentFile) { // another image was chosen meanwhile: its answer is the one on show
    showEditNote([bdi(file.name), ": ", ...note]);
    return;
  }
  if (point.new) taught = { id: point.id, label: point.label, label_name: point.label_name };
  await classify(); // the answer with the new point among the neighbours
  $("teach-note").replaceChildren(...note);
  const undo = $("teach-undo");
  undo.hidden = !taught;
  undo.textContent = "Undo: forget the point added";
  // Begun with the words shown (WCAG 2.5.3): speech input says what it sees
  undo.setAttribute("aria-label", `${undo.textContent} as ${named(point.label, point.label_name)}`);
  $("teach-note").focus({ preventScroll: true }); // the form went with the image now in memory: focus on what happened
}

async function undoTeach() {
  if (!taught || $("teach-undo").getAttribute("aria-disabled") === "true") return;
  $("teach-undo").setAttribute("aria-disabled", "true");
  try {
    await forget(taught, false, false); // as a card's Forget does (says so, classifies again), and erases nothing
  } finally {
    $("teach-undo").removeAttribute("aria-disabled");
  }
}

function init() {
  $("api-key").value = sessionStorage.getItem("vmem-api-key") || "";
  $("api-key").addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || !$("api-key").value.trim()) return;
    e.preventDefault();
    const retry = retryWithKey;
    retryWithKey = null;
    if (retry) retry(); // the edit (or re-ranked classify) that asked for the key, now with it
  });
  $("preview").addEventListener("error", noPreview);
  $("file").addEventListener("change", (e) => {
    chooseFile(e.target.files[0]);
    // Held, the file chosen again reports no change: a person's retry (the service was restarting) did nothing
    e.target.value = "";
  });
  // A file dropped anywhere on the page is the image to classify, the drop zone lit meanwhile: dropped beside the
  // zone, it was refused, and a desktop browser opened the file in the page's place (the answer and options gone).
  // Text dragged into a field is left to the field.
  const drop = $("drop");
  const dragsFiles = (e) => Boolean(e.dataTransfer) && [...e.dataTransfer.types].includes("Files");
  document.addEventListener("dragover", (e) => {
    if (!dragsFiles(e)) return;
    e.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); }); // left the window
  document.addEventListener("drop", (e) => {
    if (!dragsFiles(e)) return;
    e.preventDefault();
    drop.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
  $("classify-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if ($("classify-btn").getAttribute("aria-disabled") !== "true") classify();
  });
  $("label-filter").addEventListener("input", () => listLabels(true));
  $("teach-form").addEventListener("submit", (e) => {
    e.preventDefault();
    teach();
  });
  $("teach-label").addEventListener("input", teachHint);
  $("why-not-form").addEventListener("submit", (e) => {
    e.preventDefault();
    askWhyNot();
  });
  $("why-not-label").addEventListener("input", () => $("why-not-label").removeAttribute("aria-invalid"));
  $("teach-undo").addEventListener("click", undoTeach);
  window.addEventListener("popstate", (e) => stepTo(e.state));
  $("history-box").addEventListener("toggle", loadHistory);
  $("suspects-box").addEventListener("toggle", loadSuspects);
  $("label-more").addEventListener("click", () => labelShown && showLabel(labelShown.label, labelShown.name, labelShown.cursor));
  // The template is the re-rank's: offered without it, one chosen changed nothing, unsaid
  const templateWithRerank = () => { $("template").disabled = !$("rerank").checked; };
  templateWithRerank(); // the box as the browser restored it
  $("rerank").addEventListener("change", () => {
    templateWithRerank();
    classifyWhenSettled(0);
  });
  for (const id of ["template", "vote", "k", "min-confidence"]) {
    $(id).addEventListener("change", () => classifyWhenSettled(600));
  }
  loadStats();
  loadTemplates();
}

document.addEventListener("DOMContentLoaded", init);
