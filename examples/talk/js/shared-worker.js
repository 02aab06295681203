const URL = (self.location.protocol === "https:" ? "wss://" : "ws://") + self.location.host + "/ws/count/" + self.location.pathname.split("/")[3] + "/";
const connections = [];
var sharedWebSocket;

onconnect = function(e) {
  const port = e.ports[0];
  connections.push(port);
  port.start();

  if (!sharedWebSocket) {
    sharedWebSocket = new WebSocket(URL);

    sharedWebSocket.onmessage = function(e) {
      connections.forEach(function(connection) {
        let data = JSON.parse(e.data);
        connection.postMessage(data);
      });
    };
  }

  sharedWebSocket.send("PING");
};
