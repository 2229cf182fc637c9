// The page of `being serve`: one WebRTC session at a time, fed by the microphone or by a dropped audio file.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const q = token ? `?token=${encodeURIComponent(token)}` : "";
const $ = (id) => document.getElementById(id);
let pc = null, audioContext = null, micStream = null;

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadAvatars() {
  const response = await fetch(`api/avatars${q}`);
  if (!response.ok) throw new Error(`the server says ${response.status}: ${(await response.json()).detail}`);
  for (const a of await response.json()) {
    const option = new Option(`${a.name} (${a.width}x${a.height}, ${a.trainer}${a.refiner ? " + " + a.refiner : ""})`, a.name);
    $("avatar").add(option);
  }
}

async function iceComplete(peer) {
  if (peer.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const check = () => { if (peer.iceGatheringState === "complete") { peer.removeEventListener("icegatheringstatechange", check); resolve(); } };
    peer.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000);
  });
}

async function start(stream, what) {
  await stop();
  status(`connecting (${what})...`);
  pc = new RTCPeerConnection();
  const remote = new MediaStream();
  $("video").srcObject = remote;
  pc.ontrack = (event) => { remote.addTrack(event.track); };
  pc.onconnectionstatechange = () => {
    if (pc && pc.connectionState === "connected") status(`live: ${what}`);
    if (pc && ["failed", "closed"].includes(pc.connectionState)) status(`the session ended (${pc.connectionState})`, true);
  };
  pc.addTransceiver("video", { direction: "recvonly" });
  for (const track of stream.getAudioTracks()) pc.addTrack(track, stream);
  await pc.setLocalDescription(await pc.createOffer());
  await iceComplete(pc);
  const response = await fetch(`api/offer${q}`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, avatar: $("avatar").value }),
  });
  if (!response.ok) throw new Error(`the server refused the session: ${(await response.json()).detail}`);
  await pc.setRemoteDescription(await response.json());
  $("stop").disabled = false;
}

async function stop() {
  if (pc) { pc.close(); pc = null; }
  if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; }
  if (audioContext) { await audioContext.close(); audioContext = null; }
  $("stop").disabled = true;
}

async function speakFile(file) {
  audioContext = new AudioContext();
  const buffer = await audioContext.decodeAudioData(await file.arrayBuffer());
  const source = audioContext.createBufferSource();
  source.buffer = buffer;
  const destination = audioContext.createMediaStreamDestination();
  source.connect(destination);
  const context = audioContext;
  await start(destination.stream, file.name);
  source.onended = () => { if (audioContext === context) status(`said ${file.name}; the avatar idles`); };
  source.start(context.currentTime + 0.3);
}

function guard(action) {
  return async (...args) => {
    try { await action(...args); } catch (error) { status(String(error.message || error), true); }
  };
}

$("mic").onclick = guard(async () => {
  micStream = await navigator.mediaDevices.getUserMedia({ audio: true });
  await start(micStream, "microphone");
});
$("stop").onclick = guard(async () => { await stop(); status("stopped"); });
$("file").onchange = guard(async (event) => { if (event.target.files[0]) await speakFile(event.target.files[0]); });
const drop = $("drop");
drop.ondragover = (event) => { event.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = guard(async (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files[0]) await speakFile(event.dataTransfer.files[0]);
});
guard(loadAvatars)();
