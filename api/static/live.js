// The live event stream (GET /api/generations/events, Server-Sent Events): every change of the
// signed-in holder's generations, pushed. EventSource cannot send headers, so the key travels as
// `?key=` (the one route that accepts it; the api never logs query strings).
//
// While the browser keeps the stream it reconnects by itself and sends Last-Event-ID, so nothing
// is missed. When it gives up (the gateway answered an error, or went away for long), we open a
// new one after a pause and name the last event we saw ourselves (`last_event_id`).

const RETRY_SECONDS = [1, 2, 5, 10, 20];

export class LiveStream {
  constructor({ key, onGeneration, onStatus, onConnected, onGiveUp }) {
    this.key = key;
    this.onGeneration = onGeneration;
    this.onStatus = onStatus;
    this.onConnected = onConnected;
    this.onGiveUp = onGiveUp;
    this.lastEventId = null;
    this.source = null;
    this.retry = 0;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
  }

  open() {
    const params = new URLSearchParams();
    if (this.key) params.set("key", this.key);
    if (this.lastEventId) params.set("last_event_id", this.lastEventId);
    const query = [...params].length ? `?${params}` : "";
    const source = new EventSource(`/api/generations/events${query}`);
    this.source = source;
    this.onStatus("connecting");
    source.addEventListener("open", () => {
      this.retry = 0;
      this.onStatus("live");
      this.onConnected();
    });
    source.addEventListener("generation", (event) => {
      if (event.lastEventId) this.lastEventId = event.lastEventId;
      let generation;
      try {
        generation = JSON.parse(event.data);
      } catch {
        return; // not ours to show; the next event carries the whole generation again
      }
      this.onGeneration(generation);
    });
    source.addEventListener("error", () => {
      if (this.stopped || source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        this.onStatus("offline");
        const wait = RETRY_SECONDS[Math.min(this.retry, RETRY_SECONDS.length - 1)];
        this.retry += 1;
        this.onGiveUp?.();
        this.timer = setTimeout(() => {
          if (!this.stopped) this.open();
        }, wait * 1000);
      } else {
        this.onStatus("reconnecting"); // the browser is at it already, with Last-Event-ID
      }
    });
  }
}
