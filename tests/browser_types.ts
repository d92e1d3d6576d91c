// A page written against wshub.d.ts, checked by `tsc --strict` in CI (.ci/run): the types
// describe the API the browser tests exercise, and a page can use them without `any`.
import { connect, type Member, type Position, type ServerError } from "../src/browser/wshub.js";

const client = connect("/ws", { minDelay: 250, maxDelay: 10_000, queueLimit: 50, pingInterval: 15_000 });
let last: Position | null = null;
const board = client.subscribe("board", {
  onPublication(data, info) {
    const text: string = typeof data === "string" ? data : new TextDecoder().decode(data);
    if (info.epoch !== undefined && info.offset !== undefined) last = { epoch: info.epoch, offset: info.offset };
    console.log(text, info.topic);
  },
  onUnrecoverable(position) { last = position; },
  onSubscribed({ recovered, replayed }) { console.log(recovered ? replayed : 0); },
  onJoin(member: Member) { console.log(member.id, member.info ?? "anonymous"); },
  onLeave({ id }) { console.log(id); },
  onError(error: ServerError) { console.log(error.code); },
  since: { epoch: "4277550904642666", offset: 17 },
});
board.position = last;
const stop = client.on("reconnecting", ({ attempt, delay }) => console.log(attempt, delay.toFixed(0)));
client.on("closed", ({ code, reason, wasClean }) => console.log(code, reason, wasClean));
client.on("dropped", ({ queued }) => console.log(queued));
client.on("message", (data, json) => console.log(data, json));
client.on("pong", ({ rtt }) => console.log(rtt ?? -1));
const kept: boolean = client.send({ type: "chat", text: "hi" }) && client.send(new Uint8Array([1, 2]));
client.presence("room").then((members) => members.map((m) => m.id), (e: unknown) => e);
console.log(kept, client.state === "open", client.attempt, client.url);
stop();
client.unsubscribe("board");
client.close();
