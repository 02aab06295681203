const worker = new SharedWorker('js/shared-worker.js')

worker.port.onmessage = function(e) {
  var data = e.data
  var totalConnections = data['connections']
  var lastUpdated = data['updated']

  document.querySelector('#count').textContent = totalConnections
  document.querySelector('#updated').textContent = lastUpdated
}

worker.port.start()
